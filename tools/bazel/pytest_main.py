"""The `main` of every test target made by `py_pytest_test` (python.bzl).

Runs pytest on the test files given as arguments, the way `./dev.sh test`
does, with the results written where `bazel test` collects them.
"""

import os
import sys

import pytest
import runfiles_only


def main(argv):
    runfiles_only.isolate()
    # Runfiles are read-only in the sandbox; nothing here needs .pyc files.
    sys.dont_write_bytecode = True

    args = ["-p", "no:cacheprovider"]
    if os.path.isfile("setup.cfg"):  # the project's [tool:pytest] settings
        args += ["-c", "setup.cfg"]
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
    if os.environ.get("TESTBRIDGE_TEST_ONLY"):  # bazel test --test_filter=...
        args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    code = pytest.main(args + argv)
    if code in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR):
        # Most often a collection error: a module the file imports is not in
        # the runfiles.
        print("\nIf a module of this project could not be imported: a test "
              "gets //tf_lamb, //train or //benchmarks by its file name; "
              "see _DEPS in tests/BUILD.")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
