"""A Python toolchain whose interpreter is the project's virtual environment.

`./dev.sh setup` creates `.venv` (or `$VENV`, as dev.sh reads it) with
TensorFlow, Keras and pytest. Registering `@venv_python//:toolchain` makes
every py_binary and py_test run that interpreter, so `bazel test` sees the
same packages as `./dev.sh test`, never whatever `python3` is on the PATH.
"""

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "python3",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":python3",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _venv_python_impl(rctx):
    venv = rctx.os.environ.get("VENV", "") or rctx.attr.venv
    if not venv.startswith("/"):
        venv = "%s/%s" % (rctx.path(Label("//:WORKSPACE")).dirname, venv)

    # The venv's own bin/python, not the file it links to: Python finds the
    # venv (its pyvenv.cfg, its site-packages) from the path it was run by.
    python = venv + "/bin/python"
    if not rctx.path(python).exists:
        fail("No Python at %s: create the virtual environment first " % python +
             "(./dev.sh setup), then run Bazel again.")
    rctx.file("WORKSPACE", "workspace(name = \"%s\")\n" % rctx.name)
    rctx.file("BUILD", _BUILD.format(python = python))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    attrs = {
        "venv": attr.string(
            default = ".venv",
            doc = "The virtual environment, relative to the workspace root " +
                  "or absolute; the VENV environment variable overrides it.",
        ),
    },
    environ = ["VENV"],
    local = True,
)
