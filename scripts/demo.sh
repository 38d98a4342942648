#!/usr/bin/env bash
# The main job: stock generate vs base vs self-speculative decoding on real prompts (embedded model).
# Extra arguments go to `python -m ssd.bench` (see --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Offline data for CNN/DM and XSum, when the shared folder sits beside the checkout.
if [ -z "${SSD_DATA_DIR:-}" ] && [ -d ../shared/data ]; then export SSD_DATA_DIR="$(cd ../shared/data && pwd)"; fi
exec "${SSD_VENV:-.venv}/bin/python" -m ssd.bench "$@"
