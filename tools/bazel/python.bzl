"""Python target macros for this project: pytest tests and `-m` binaries."""

def py_pytest_test(name, src, deps = [], data = [], **kwargs):
    """A py_test that runs the pytest file `src` with the project's settings.

    Args:
      name: the target's name.
      src: the test file, e.g. "test_lamb.py".
      deps: the py_library targets the file imports.
      data: files the test reads.
      **kwargs: passed on to py_test (size, timeout, tags, ...).
    """
    native.py_test(
        name = name,
        srcs = [src, "//tools/bazel:pytest_main.py"],
        main = "//tools/bazel:pytest_main.py",
        args = ["$(rootpath %s)" % src],
        data = data + ["//:setup.cfg"],
        deps = deps + ["//tools/bazel:runfiles_only"],
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )

def _module_main_impl(ctx):
    ctx.actions.expand_template(
        template = ctx.file._template,
        output = ctx.outputs.out,
        substitutions = {"{MODULE}": ctx.attr.module},
    )

_module_main = rule(
    implementation = _module_main_impl,
    attrs = {
        "module": attr.string(mandatory = True),
        "out": attr.output(mandatory = True),
        "_template": attr.label(
            default = "//tools/bazel:module_main.py.tpl",
            allow_single_file = True,
        ),
    },
)

def py_module_binary(name, module, deps = [], **kwargs):
    """A py_binary that runs `module` like `python -m module` does.

    Running the module by name (not its file as a script) keeps its package
    context, so relative imports and `__package__` behave as under `-m`.

    Args:
      name: the target's name.
      module: the dotted module name, e.g. "train.pretrain".
      deps: the py_library that holds the module, and anything else it needs.
      **kwargs: passed on to py_binary.
    """
    main = name + "_main.py"
    _module_main(
        name = name + "_main",
        module = module,
        out = main,
    )
    native.py_binary(
        name = name,
        srcs = [main],
        main = main,
        deps = deps + ["//tools/bazel:runfiles_only"],
        python_version = "PY3",
        srcs_version = "PY3",
        **kwargs
    )
