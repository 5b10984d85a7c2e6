#!/usr/bin/env bash
# The whole check: lint, types, the layer contract, then the test suite. Creates .venv and installs
# the dev extras if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3.11 -m venv .venv
# llama.cpp's default build targets the building CPU's every instruction; where a virtual machine
# reports one it cannot run (AMX here), the model dies with SIGILL: build for the portable x86-64 set
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
[ -x .venv/bin/pytest ] && [ -x .venv/bin/llm4rec ] || .venv/bin/pip install --quiet -e '.[dev]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/pytest -q "$@"
