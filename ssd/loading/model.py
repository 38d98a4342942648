"""Loading a LLaMA-family checkpoint into `ssd`'s model class, and the defaults that go with a device."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from ssd.core.draft import Draft
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.fast.cpu import available_memory
from ssd.fast.device import DeviceProfile, dtype_name
from ssd.fast.packed import can_pack
from ssd.loading.architectures import model_class
from ssd.loading.checkpoints import quiet_packed_gguf_advice, resolve_checkpoint

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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def should_pack_weights(model: LlamaForCausalLM, profile: DeviceProfile | None = None,
                        available: int | None = None) -> bool:
    """Pack the weights (`LlamaForCausalLM.pack_weights`) where the device's profile says so
    (`DeviceProfile.packs`: bfloat16 on a CPU that has it natively) and oneDNN can, when the copies take
    at most half the memory still available (`available`, bytes; None: this machine's,
    `ssd.fast.cpu.available_memory`): they take as much again as the linear weights, and a model that fits
    once must not fail to load for them. `profile`: None is the model's device's."""
    profile = profile or DeviceProfile.of(model.device)
    if not (profile.packs(model.dtype) and can_pack(model.device, model.dtype)):
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


def free_memory(device: torch.device, device_map=None) -> int | None:
    """Bytes free for a model placed on `device`, or by `device_map` (a strategy over several GPUs: all
    of them together; a map: the devices it names); None where it cannot be told (a CPU outside Linux)."""
    if device_map is None:
        places = {str(device)}
    elif isinstance(device_map, dict):
        places = {str(place) for place in device_map.values()}
    elif device_map in DEVICE_MAP_STRATEGIES:
        places = {f"cuda:{i}" for i in range(torch.cuda.device_count())} if torch.cuda.is_available() else {"cpu"}
    else:
        places = {str(device_map)}
    devices = {torch.device(int(p) if p.isdigit() else p) for p in places}
    total = 0
    for place in devices:
        if place.type == "cuda":
            total += torch.cuda.mem_get_info(place)[0]
        elif (available := available_memory()) is None:
            return None
        else:
            total += available
    return total


def weight_bytes(config, dtype: torch.dtype) -> int:
    """What a checkpoint's weights take in `dtype`, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = model_class(config)(config)
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


def check_memory(config, dtype: torch.dtype, device: torch.device, device_map=None, name="the model") -> None:
    """Refuse, before loading, a model whose weights alone exceed the memory free where it goes: loading
    it would fail after minutes, or swap."""
    need, have = weight_bytes(config, dtype), free_memory(device, device_map)
    if have is not None and need > have:
        where = f"device_map={device_map!r}" if device_map is not None else str(device)
        raise MemoryError(f"{name} needs about {need / 2**30:.1f} GiB for its {dtype_name(dtype)} weights and "
                          f"{where} has {have / 2**30:.1f} GiB free: use a smaller dtype, or more GPUs "
                          f"(device_map='auto')")


def stock_twin(model: LlamaForCausalLM):
    """Stock transformers' model of `model`'s checkpoint on `model`'s own weight tensors: built on the meta
    device, then given the very tensors `model` holds, so stock `generate` runs beside ours with no second
    copy (a 13B model loaded twice would not fit one GPU). A model placed by accelerate gets the same
    placement and hooks. Its products run transformers' kernels on the same weights: it is the same model
    stock `from_pretrained` would load."""
    with torch.device("meta"):
        stock = AutoModelForCausalLM.from_config(model.config)
    result = stock.load_state_dict(model.state_dict(), strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"stock transformers' {type(stock).__name__} does not take this model's weights: missing "
                         f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    with torch.device(model.model.embed_tokens.weight.device):  # frequencies: a buffer, not in the state dict
        stock.model.rotary_emb = type(stock.model.rotary_emb)(config=model.config)
    stock.generation_config = copy.deepcopy(model.generation_config)
    device_map = getattr(model, "hf_device_map", None)
    if device_map is not None and hasattr(model, "_hf_hook"):
        from accelerate import dispatch_model  # here: `import ssd` does not pay for accelerate

        stock = dispatch_model(stock, device_map, force_hooks=True, skip_keys=stock._skip_keys_device_placement)
    return stock.eval()


def checkpoint_generation_config(name_or_path, hub: dict, config) -> GenerationConfig:
    """The checkpoint's `generation_config.json` (EOS ids, sampling defaults), else one derived from its config,
    as transformers' own models get: `ssd.generate` starts from it."""
    if "gguf_file" not in hub:
        try:
            return GenerationConfig.from_pretrained(name_or_path, **hub)
        except OSError:
            pass  # no generation_config.json in the checkpoint
    return GenerationConfig.from_model_config(config)


def default_draft_precision(model: LlamaForCausalLM, profile: DeviceProfile | None = None) -> str | None:
    """The draft precision `load_model` sets: the first of the profile's `default_draft_precisions`
    (int4, then int8, on a CPU) whose kernel takes the model's weight shapes; None (the model's own
    weights) where none does, and on a GPU, where no low-bit draft was measured (docs/benchmarks.md).
    `profile`: None is the model's device's."""
    profile = profile or DeviceProfile.of(model.device)
    for precision in profile.default_draft_precisions:
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
    checkpoint folder, see `ssd.loading.checkpoints`).
    Otherwise a hub id or a local folder; pass `gguf_file=` for a GGUF file and
    `device_map="auto"` to spread a large model over several GPUs (then
    `device` is ignored). The hub arguments (`HUB_KWARGS`: `token`, `revision`,
    `subfolder`, `cache_dir`, `local_files_only`, ...) go to the config, the
    weights and the tokenizer alike; other keyword arguments go to the weights'
    `from_pretrained` only. `dtype`: a torch dtype or its name (float32,
    bfloat16, float16); None is the device's (`DeviceProfile.dtype`; a
    `device_map` naming one device: that device's). `compile`: the layer blocks through `torch.compile`
    (`LlamaForCausalLM.compile_blocks`); None compiles where that was
    measured faster and exact (`DeviceProfile.compiles`: on a CPU with a C++
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
    profile = DeviceProfile.of(device)
    dtype = dtype or profile.dtype
    check_memory(config, dtype, device, device_map, str(name_or_path))
    # The tokenizer before the weights: a missing tokenizer then fails in seconds, not after the load.
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **tokenizer_hub_kwargs(hub))
    placed_by_accelerate = "device_map" in from_pretrained_kwargs
    with quiet_packed_gguf_advice():
        model = model_cls.from_pretrained(name_or_path, config=config, dtype=dtype, **from_pretrained_kwargs)
    if placed_by_accelerate:
        refuse_offload(getattr(model, "hf_device_map", None) or {})
    else:
        model.to(device)
    model.eval()
    caveat = profile.exactness_caveat(model.dtype)
    if caveat:
        logger.warning(caveat)
    model.tokenizer = tokenizer
    model.generation_config = checkpoint_generation_config(name_or_path, hub, config)
    if draft_precision == "default":
        default_draft_precision(model, profile)
    else:
        model.set_draft_precision(draft_precision)
    if pack_weights if pack_weights is not None else should_pack_weights(model, profile):
        model.pack_weights()
    if compile if compile is not None else profile.compiles(model.dtype):
        model.compile_blocks()
    return model, tokenizer
