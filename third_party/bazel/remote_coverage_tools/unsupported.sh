#!/bin/sh
echo "bazel coverage is not supported offline: this is a local stand-in" >&2
echo "(third_party/bazel/remote_coverage_tools) for Bazel's coverage tools." >&2
exit 1
