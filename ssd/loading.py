"""Loading a LLaMA-family checkpoint into `ssd`'s model class, and the defaults that go with a device."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from ssd.checkpoints import quiet_packed_gguf_advice, resolve_checkpoint
from ssd.cpu import available_memory, cpu_has_native_bfloat16
from ssd.draft import Draft
from ssd.modeling_llama import LlamaForCausalLM, model_class
from ssd.packed import can_pack

logger = logging.getLogger(__name__)

# `from_pretrained` arguments that say where the files are: the config, the weights and the tokenizer
# must all be read from the same place (one revision, one subfolder, a gated repo's token).
HUB_KWARGS = (
    "token", "revision", "cache_dir", "local_files_only", "force_download", "proxies", "subfolder", "gguf_file"
)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype by its name (`"bfloat16"`), as notebooks and the bench's flags give it, or one of `DTYPES`'
    torch dtypes; None stays None."""
    if name is None or name in DTYPES.values():
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} (by name or as torch dtypes) or None, got {name!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"`."""
    return str(dtype).removeprefix("torch.")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype that decodes fastest on `device`.

    GPUs: bfloat16 (float16 where it is missing). CPUs: bfloat16 where the CPU
    has native bfloat16 arithmetic (AVX512-BF16 or AMX), float32 otherwise.
    On a 2-core AMD EPYC with AVX512-BF16, both compiled, bfloat16 `base`
    decoded SmolLM2-135M 1.34x faster than float32 and Qwen2.5-Coder-1.5B
    about 2.8x (docs/numerics.md). Token identity with step-by-step decoding
    holds in float32, and in bfloat16 on CPUs with native bfloat16.
    """
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32


def cpu_compiler_available() -> bool:
    """Inductor builds CPU kernels with a C++ compiler."""
    return shutil.which(os.environ.get("CXX", "g++")) is not None


def should_compile(model: LlamaForCausalLM) -> bool:
    """Compile by default on a CPU, in float32, and in bfloat16 where the CPU has it natively: measured
    faster there, and in bfloat16 a row's result stays independent of its pass (docs/numerics.md). GPUs
    were not measured; emulated bfloat16 is not row-invariant to begin with."""
    native = model.dtype == torch.float32 or model.dtype == torch.bfloat16 and cpu_has_native_bfloat16()
    return model.device.type == "cpu" and native and cpu_compiler_available()


def should_pack_weights(model: LlamaForCausalLM, available: int | None = None) -> bool:
    """Pack the weights (`LlamaForCausalLM.pack_weights`) in bfloat16 on a CPU that has it natively,
    where the copies take at most half the memory still available (`available`, bytes; None: this
    machine's, `ssd.cpu.available_memory`): they take as much again as the linear weights, and a
    model that fits once must not fail to load for them. On a 2-core AMD EPYC with AVX512-BF16,
    compiled, a SmolLM2-135M step took 42 ms instead of 52, a 4-token verification 44 instead of 60
    (one run, alternating). Not measured where bfloat16 is emulated; `load_model` picks float32
    there anyway."""
    if not (can_pack(model.device, model.dtype) and cpu_has_native_bfloat16()):
        return False
    available = available_memory() if available is None else available
    copies = sum(module.weight.nbytes for module in model.linears())
    return available is None or 2 * copies <= available


def tokenizer_hub_kwargs(hub: dict) -> dict:
    """The hub arguments for `AutoTokenizer`, with a GGUF in a subfolder named by its path in the repository.

    transformers (5.x) reads a tokenizer from a GGUF in the top folder, whatever `subfolder` says.
    """
    gguf_file, subfolder = hub.get("gguf_file"), hub.get("subfolder")
    if gguf_file is None or not subfolder or os.path.isabs(gguf_file):
        return hub
    return {key: value for key, value in hub.items() if key != "subfolder"} | {
        "gguf_file": f"{str(subfolder).rstrip('/')}/{gguf_file}"
    }


# The strings accelerate takes as a whole `device_map` (besides a device).
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device(device: torch.device | str | None) -> torch.device:
    """`device` as a torch device this machine has; None is `default_device()`."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: this machine has no CUDA GPU (torch {torch.__version__}); use 'cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type != "cpu":
        raise ValueError(f"device {str(device)!r}: ssd runs on 'cpu' or 'cuda' devices")
    return device


def check_load_arguments(name_or_path, compile=None, draft_precision="default", pack_weights=None,
                         device_map=None) -> str | Path | None:
    """What `load_model` refuses before reading anything: each error names the value and what is allowed.
    Returns `name_or_path`, a local path with `~` expanded."""
    if name_or_path is not None and not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"name_or_path must be a hub id, a folder or None (the embedded model), got {name_or_path!r}")
    path = Path(str(name_or_path or "")).expanduser()
    looks_local = isinstance(name_or_path, Path) or str(name_or_path or "").startswith(("/", ".", "~"))
    if name_or_path is not None and (looks_local or path.exists()):
        if not path.is_dir():
            raise FileNotFoundError(f"no checkpoint folder at {path}" + (" (it is a file)" if path.exists() else ""))
        name_or_path = path
    for name, value in (("compile", compile), ("pack_weights", pack_weights)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be True, False or None (ssd's default for the device), got {value!r}")
    if draft_precision != "default":
        Draft(precision=draft_precision)  # its own error names the precisions ("default" also stands)
    if isinstance(device_map, dict):
        refuse_offload(device_map)  # an explicit map: refused before any loading
    elif isinstance(device_map, str) and device_map not in DEVICE_MAP_STRATEGIES:
        try:
            parse_device(device_map)
        except ValueError as error:
            raise ValueError(f"device_map must be a dict, one of {DEVICE_MAP_STRATEGIES} or a device: {error}") from None
    return name_or_path


def placement_device(device, device_map) -> torch.device:
    """The device whose rules (dtype) a model placed by `device` or `device_map` follows: a map naming
    one device (a device string, or a dict with one place) is that device's; a strategy over several
    places follows the default device."""
    if device_map is None:
        return parse_device(device)
    places = {str(place) for place in device_map.values()} if isinstance(device_map, dict) else {str(device_map)}
    if len(places) == 1 and (place := places.pop()) not in DEVICE_MAP_STRATEGIES:
        return parse_device(int(place) if place.isdigit() else place)
    return default_device()


def refuse_offload(device_map: dict) -> None:
    """A clear error for a model accelerate offloaded: modules on `"disk"`, or on `"cpu"` while others are
    on a GPU. Their weights wait on the meta device until a hook loads them, and the KV cache, allocated
    on each layer's weight device, cannot live there."""
    places = {str(place) for place in device_map.values()}
    offloaded = sorted(name for name, place in device_map.items()
                       if str(place) == "disk" or str(place) == "cpu" and places - {"cpu"})
    if offloaded:
        raise ValueError(f"{len(offloaded)} modules are offloaded (to disk, or to the CPU beside GPUs), e.g. "
                         f"{offloaded[:3]}: ssd needs every layer's weights and KV cache on one device for that "
                         f"layer. Use more GPUs, a smaller dtype, or max_memory that fits the model.")


def exactness_caveat(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why greedy self-speculative output may part from step-by-step decoding on this device, or None.

    On a CPU `ssd` makes a token's logits independent of the other rows of its pass in half precision
    (docs/numerics.md), and float32 leaves differences in the last bits (a flip needs a near-tie).
    On a GPU neither holds by construction: kernels are chosen by row count in every dtype.
    """
    if device.type == "cpu":
        return None
    return (f"on {device.type} in {dtype_name(dtype)}, a verification pass and a one-token "
            f"step run different kernels, so greedy self-speculative output can part from step-by-step "
            f"decoding where two tokens are near-tied (more often in half precision); docs/numerics.md")


def checkpoint_generation_config(name_or_path, hub: dict, config) -> GenerationConfig:
    """The checkpoint's `generation_config.json` (EOS ids, sampling defaults), else one derived from its config,
    as transformers' own models get: `ssd.generate` starts from it."""
    if "gguf_file" not in hub:
        try:
            return GenerationConfig.from_pretrained(name_or_path, **hub)
        except OSError:
            pass  # no generation_config.json in the checkpoint
    return GenerationConfig.from_model_config(config)


def default_draft_precision(model: LlamaForCausalLM) -> str | None:
    """The draft precision `load_model` sets: `"int4"` on a CPU, `"int8"` there if int4's kernel cannot
    take the model's weight shapes, None (the model's own weights) on other devices, where no low-bit
    draft was measured.

    Measured on a 2-core AVX2-only AMD EPYC, float32, 5 chat prompts, 96 tokens, lookups off, side by
    side (before q/k/v and gate/up were fused into one product each): the int4 draft decoded 1.23x
    faster than `base`, int8 1.12x (a draft step cost about 0.47 and 0.62 of a full step; acceptance
    0.93 and 0.91). The int4 copies add about 103 MiB to the float32 model's 513 MiB.
    """
    if model.device.type != "cpu":
        return None
    for precision in ("int4", "int8"):
        try:
            model.set_draft_precision(precision)  # builds its copies: refused when a shape does not fit
        except ValueError:
            continue
        return precision
    return None


def load_model(
    name_or_path: str | Path | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    compile: bool | None = None,
    draft_precision: str | None = "default",
    pack_weights: bool | None = None,
    **from_pretrained_kwargs,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """A LLaMA or Qwen2 checkpoint in `ssd`'s model class, with its tokenizer.

    `name_or_path=None` loads the embedded SmolLM2-135M-Instruct, and
    `"qwen2.5-coder-1.5b-instruct"` Qwen2.5-Coder-1.5B-Instruct from the `qwen`
    extra's packages (no network; the first load converts the GGUF to a
    checkpoint folder, see `ssd.checkpoints`).
    Otherwise a hub id or a local folder; pass `gguf_file=` for a GGUF file and
    `device_map="auto"` to spread a large model over several GPUs (then
    `device` is ignored). The hub arguments (`HUB_KWARGS`: `token`, `revision`,
    `subfolder`, `cache_dir`, `local_files_only`, ...) go to the config, the
    weights and the tokenizer alike; other keyword arguments go to the weights'
    `from_pretrained` only. `dtype`: a torch dtype or its name (float32,
    bfloat16, float16); None is `default_dtype`'s rule for the device (a
    `device_map` naming one device: that device's). `compile`: the layer blocks through `torch.compile`
    (`LlamaForCausalLM.compile_blocks`); None compiles where that was
    measured faster and exact (`should_compile`: on a CPU with a C++
    compiler, float32, and bfloat16 where the CPU has it natively); it
    compiles before returning (about a minute on 2 cores). `draft_precision`:
    the weights the self-draft runs (`set_draft_precision`); `"default"` is
    `default_draft_precision`'s rule, int4 on a CPU. `pack_weights`: run
    bfloat16 products on copies of the weights in oneDNN's layout
    (`LlamaForCausalLM.pack_weights`, as much memory again as the linear
    weights); None packs where `should_pack_weights` says (bfloat16 on a CPU
    that has it natively, when the copies fit in half the available memory).

    The tokenizer is also kept as `model.tokenizer`, so that `ssd.generate`
    can take strings and chats with the model alone, and the checkpoint's
    generation settings as `model.generation_config`, which it starts from.
    """
    device_map = from_pretrained_kwargs.get("device_map")
    name_or_path = check_load_arguments(name_or_path, compile, draft_precision, pack_weights, device_map)
    dtype = parse_dtype(dtype)
    device = placement_device(device, device_map)
    name_or_path = resolve_checkpoint(name_or_path)
    hub = {key: from_pretrained_kwargs[key] for key in HUB_KWARGS if key in from_pretrained_kwargs}
    try:
        config = AutoConfig.from_pretrained(name_or_path, **hub)
    except OSError as error:  # a folder without a config, or a hub id the hub does not give
        where = "a folder without a readable config" if Path(name_or_path).is_dir() else "no such folder here; the hub"
        raise OSError(f"could not load {str(name_or_path)!r} ({where}): {error}") from None
    try:
        model_cls = model_class(config)
    except ValueError as error:
        raise ValueError(f"{name_or_path}: {error}") from None
    # The tokenizer before the weights: a missing tokenizer then fails in seconds, not after the load.
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **tokenizer_hub_kwargs(hub))
    placed_by_accelerate = "device_map" in from_pretrained_kwargs
    dtype = dtype or default_dtype(device)
    with quiet_packed_gguf_advice():
        model = model_cls.from_pretrained(name_or_path, config=config, dtype=dtype, **from_pretrained_kwargs)
    if placed_by_accelerate:
        refuse_offload(getattr(model, "hf_device_map", None) or {})
    else:
        model.to(device)
    model.eval()
    caveat = exactness_caveat(model.device, model.dtype)
    if caveat:
        logger.warning(caveat)
    model.tokenizer = tokenizer
    model.generation_config = checkpoint_generation_config(name_or_path, hub, config)
    if draft_precision == "default":
        default_draft_precision(model)
    else:
        model.set_draft_precision(draft_precision)
    if pack_weights if pack_weights is not None else should_pack_weights(model):
        model.pack_weights()
    if compile if compile is not None else should_compile(model):
        model.compile_blocks()
    return model, tokenizer
