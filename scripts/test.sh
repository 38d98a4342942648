#!/usr/bin/env bash
# The test suite (pytest; notebooks through nbval). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# One worker per core, each on one thread, a test file (or notebook) at a time: a decoding step is
# latency-bound, so two one-thread workers do nearly twice the work of one two-thread process. Files
# go out in collection order, the longest first (tests/conftest.py), not by their number of tests.
exec "${SSD_VENV:-.venv}/bin/python" -m pytest -n auto --dist loadfile --no-loadscope-reorder "$@"
