#!/usr/bin/env bash
# The whole check: lint, types, the layer contract, then the test suite. Creates .venv and installs
# the dev extras if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3.11 -m venv .venv
[ -x .venv/bin/pytest ] && [ -x .venv/bin/llm4rec ] || .venv/bin/pip install --quiet -e '.[dev]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/pytest -q "$@"
