#!/usr/bin/env bash
# The main job: stock generate vs base vs self-speculative decoding on real prompts (embedded model).
# Extra arguments go to `python -m ssd.tools.bench` (see --help): `--full` runs every method; CNN/DM and XSum
# join when $SSD_DATA_DIR (or --data-dir) names a folder holding cnndm*.jsonl / xsum*.jsonl, or the hub
# is reachable.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec "${SSD_VENV:-.venv}/bin/python" -m ssd.tools.bench "$@"
