"""scripts/setup.sh on an NVIDIA machine, run for real against a stand-in venv: an `nvidia-smi` that lists a
GPU, and a `python` that records what it is asked and answers as a venv holding a CPU or CUDA build of torch
would. Nothing is installed."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$STATE/calls"
case "$*" in
  *"torch.version.cuda is None"*) [ -f "$STATE/cuda_build" ] ;;
  *"--force-reinstall"*) touch "$STATE/cuda_build" ;;
  *"torch.cuda.is_available"*) [ -f "$STATE/gpu_usable" ] ;;
  *) exit 0 ;;
esac
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def machine(tmp_path):
    """(run setup.sh -> (exit code, stderr), state folder, venv): an NVIDIA machine and a venv that holds torch."""
    bin_dir, venv, state = tmp_path / "bin", tmp_path / "venv", tmp_path / "state"
    for folder in (bin_dir, venv / "bin", state):
        folder.mkdir(parents=True)
    executable(bin_dir / "nvidia-smi", "#!/usr/bin/env bash\necho 'GPU 0: NVIDIA H100 (UUID: GPU-0)'\n")
    executable(venv / "bin" / "python", FAKE_PYTHON)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SSD_VENV": str(venv), "STATE": str(state)}

    def run():
        done = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)
        return done.returncode, done.stderr

    return run, state, venv


def test_a_cpu_build_on_an_nvidia_machine_is_replaced_and_checked(machine):
    run, state, venv = machine
    (state / "gpu_usable").touch()
    code, _ = run()
    calls = (state / "calls").read_text()
    assert code == 0 and "--force-reinstall torch==" in calls and "torch.cuda.is_available" in calls
    assert (venv / ".ssd-setup").read_text().strip().endswith(" cuda")


def test_a_cuda_build_is_kept(machine):
    run, state, _ = machine
    (state / "cuda_build").touch()
    (state / "gpu_usable").touch()
    assert run()[0] == 0
    assert "--force-reinstall" not in (state / "calls").read_text()


def test_torch_that_cannot_use_the_gpu_stops_set_up_with_a_clear_error(machine):
    run, state, venv = machine
    code, stderr = run()
    assert code == 1 and "nvidia-smi sees a GPU but torch cannot use it" in stderr
    assert not (venv / ".ssd-setup").exists(), "not stamped: the next run tries again"


def test_a_venv_stamped_on_a_cpu_machine_is_set_up_again_on_an_nvidia_one(machine):
    run, state, venv = machine
    (state / "gpu_usable").touch()
    assert run()[0] == 0
    stamp = venv / ".ssd-setup"
    stamp.write_text(stamp.read_text().replace(" cuda", " cpu"))
    (state / "calls").unlink()
    assert run()[0] == 0 and (state / "calls").exists(), "a CPU machine's stamp does not stand here"
    (state / "calls").unlink()
    assert run()[0] == 0 and not (state / "calls").exists(), "this machine's stamp does"
