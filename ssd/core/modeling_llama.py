"""LLaMA (and Qwen2, LLaMA with q/k/v biases), full or as a draft, over a KV cache the decoding loops own.

Weight names match Hugging Face's `LlamaForCausalLM` and `Qwen2ForCausalLM`,
so `from_pretrained` loads their checkpoints (hub id, local folder, GGUF file)
into these classes unchanged. The forward is lean: no mask factories, no cache classes,
no output wrappers. A forward call writes keys and values at explicit
positions of a pre-allocated `KVCache` and attends only to positions up to
its own, so nothing ever has to be copied or rolled back (docs/design.md).

A draft pass (`forward(..., draft=Draft(...))`, `ssd.core.draft`) skips whole
sub-layers: `h = h` instead of `h = h + attn(norm(h))` for a layer in
`draft.attention`, likewise for the MLP, and may read low-bit copies of the
weights. The draft is an argument of the pass, never a mode of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel, Qwen2Config
from transformers.activations import ACT2FN

from ssd.core.attention import TreeLayout, attend, tree_layout
from ssd.core.draft import DefaultDraft, Draft
from ssd.core.rope import rope_tables
from ssd.fast import DraftHead, FastKernels, LayerGraphs, Linear, LowBitLayer, needs_row_invariance


@dataclass
class KVCache:
    """One pre-allocated key and value buffer per layer, `[batch, kv_heads, max_len, head_dim]`.

    Which positions are valid is the decoding loop's business (its committed
    length); a forward at `start_pos` reads positions `< start_pos + T` only.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One row runs as two where rows must not depend on one another (`Linear` does the same): a
        # compiled graph for one row sums its squares in another order on several threads, and on
        # Qwen2.5-Coder-1.5B a step's norm parted from the same row's in a verification.
        if x.shape[-2] == 1 and needs_row_invariance(x):
            return self._normalise(torch.cat((x, x), dim=-2))[..., :1, :]
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # In float32, as Hugging Face does, in one fused op (five fewer per norm).
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def projection_biases(config: PretrainedConfig) -> tuple[bool, bool]:
    """Whether the q/k/v projections and the output projection have biases: LLaMA's
    `attention_bias` sets both; Qwen2 has them on q, k and v and none on o."""
    if config.model_type == "qwen2":
        return True, False
    return config.attention_bias, config.attention_bias


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig | Qwen2Config):
        super().__init__()
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        qkv_bias, o_bias = projection_biases(config)
        self.q_proj = Linear(config.hidden_size, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(self.n_heads * self.head_dim, config.hidden_size, bias=o_bias)

    def forward(self, x, cos, sin, k_cache, v_cache, start_pos: int, key_len: int, low_bit: LowBitLayer | None = None,
                tree: TreeLayout | None = None):
        """Writes this pass's keys and values at start_pos.., then attends over the cache's first
        `key_len` positions; query i sees those up to position start_pos+i (a causal mask, built inside
        the pass so that a compiled graph keeps its lengths symbolic), or with a `tree` the slots
        below start_pos and its ancestors' (`ssd.core.attention.attend`)."""
        q, k, v = self.project(x, cos, sin, low_bit)
        end = start_pos + x.shape[1]
        k_cache[:, :, start_pos:end] = k
        v_cache[:, :, start_pos:end] = v
        y = attend(q, k_cache[:, :, :key_len], v_cache[:, :, :key_len], start_pos, tree)
        return self.output(y, low_bit)

    def project(self, x, cos, sin, low_bit: LowBitLayer | None = None):
        """Queries, keys and values of `x` ([batch, T, hidden]), rotated: [batch, heads, T, head_dim] each."""
        batch, length, _ = x.shape
        if low_bit is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            kv_size = self.n_kv_heads * self.head_dim
            q, k, v = low_bit.qkv(x).split([self.n_heads * self.head_dim, kv_size, kv_size], dim=-1)
        q = q.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def output(self, y, low_bit: LowBitLayer | None = None):
        """The output projection of attention's result `y` ([batch, heads, T, head_dim])."""
        batch, _, length, _ = y.shape
        y = y.transpose(1, 2).reshape(batch, length, -1)
        return self.o_proj(y) if low_bit is None else low_bit.o(y)


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig | Qwen2Config):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)  # Qwen2's config has no such option: no biases
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor, low_bit: LowBitLayer | None = None) -> torch.Tensor:
        if low_bit is None:
            return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        gate, up = low_bit.gate_up(x).chunk(2, dim=-1)
        return low_bit.down(self.act_fn(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def attention_block(self, x, cos, sin, k_cache, v_cache, start_pos: int, key_len: int, low_bit: LowBitLayer | None,
                        tree: TreeLayout | None = None):
        """`x + attention(norm(x))`, for a draft that skips the layer's MLP."""
        return x + self.self_attn(self.input_layernorm(x), cos, sin, k_cache, v_cache, start_pos, key_len, low_bit, tree)

    def mlp_block(self, x, low_bit: LowBitLayer | None):
        """`x + mlp(norm(x))`, for a draft that skips the layer's attention."""
        return x + self.mlp(self.post_attention_layernorm(x), low_bit)

    def both_blocks(self, x, cos, sin, k_cache, v_cache, start_pos: int, key_len: int, low_bit: LowBitLayer | None,
                    tree: TreeLayout | None = None):
        """The whole layer: one compiled graph instead of two where nothing is skipped."""
        x = self.attention_block(x, cos, sin, k_cache, v_cache, start_pos, key_len, low_bit, tree)
        return self.mlp_block(x, low_bit)

    def forward(
        self, x, cos, sin, k_cache, v_cache, start_pos: int, key_len: int, skip_attention: bool, skip_mlp: bool,
        low_bit: LowBitLayer | None = None, graphs: LayerGraphs | None = None, tree: TreeLayout | None = None,
    ):
        """The layer's two blocks, bar the skipped ones, on `low_bit` copies if given; `graphs`: compiled,
        if any; `tree`: the pass's rows form a token tree (`ssd.methods.tree`)."""
        graphs = graphs or EAGER_GRAPHS
        if not skip_attention and not skip_mlp:
            return graphs.layer(self, x, cos, sin, k_cache, v_cache, start_pos, key_len, low_bit, tree)
        if not skip_attention:
            x = graphs.attention(self, x, cos, sin, k_cache, v_cache, start_pos, key_len, low_bit, tree)
        if not skip_mlp:
            x = graphs.mlp(self, x, low_bit)
        return x


EAGER_GRAPHS = LayerGraphs(LlamaDecoderLayer.both_blocks, LlamaDecoderLayer.attention_block, LlamaDecoderLayer.mlp_block)


class LlamaModel(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    _no_split_modules = ["LlamaDecoderLayer"]  # device_map="auto" keeps a layer on one device
    _supports_sdpa = True  # our attention is SDPA (or plain products); lets a config that asks for it load


class LlamaForCausalLM(DefaultDraft, FastKernels, LlamaPreTrainedModel):
    """A causal LM whose forward takes a cache, a start position and, for a draft pass, a `Draft`.

    `default_draft` is the draft a generation uses when given none (`DefaultDraft`); packed weights,
    compiled graphs and low-bit copies are `FastKernels`' (the one place the network meets `ssd.fast`).
    """

    layer_graphs = EAGER_GRAPHS

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None  # built on first use, see rope_tables
        self.default_draft = Draft()
        self.init_kernels()
        self.post_init()

    @property
    def num_layers(self) -> int:
        return self.config.num_hidden_layers

    def extra_repr(self) -> str:
        return f"default_draft=({self.default_draft}), float32 products on a CPU: {self.products}"

    @property
    def max_context(self) -> int:
        return self.config.max_position_embeddings

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for every position, same formula as Hugging Face (position * inv_freq in float32).

        Built lazily: `from_pretrained` creates the model on the meta device and
        would leave a table computed in `__init__` empty.
        """
        device = self.model.embed_tokens.weight.device
        if self._rope is None or self._rope[0].device != device:
            self._rope = rope_tables(self.config, self.max_context, device)
        return self._rope

    # --- forward ----------------------------------------------------------

    def new_cache(self, max_len: int, batch_size: int = 1) -> KVCache:
        """Pre-allocate keys and values, each layer's on that layer's device."""
        if max_len > self.max_context:
            raise ValueError(f"a cache of {max_len} positions exceeds the model's context of {self.max_context}")
        keys, values = [], []
        for layer in self.model.layers:
            attn = layer.self_attn
            weight = attn.k_proj.weight
            shape = (batch_size, attn.n_kv_heads, max_len, attn.head_dim)
            keys.append(torch.zeros(shape, dtype=weight.dtype, device=weight.device))
            values.append(torch.zeros(shape, dtype=weight.dtype, device=weight.device))
        return KVCache(keys, values)

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache, start_pos: int, last_only: bool = False,
        draft: Draft | None = None, head: DraftHead | None = None, hidden_states: bool = False,
        tree: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits for `input_ids` ([batch, T]) placed at positions start_pos .. start_pos+T-1, by the full
        model (`draft=None`) or by `draft`: its skipped sub-layers left out, on its precision's copies.

        Writes keys and values at those positions of `cache` (only in the layers
        that run); positions from start_pos+T on get attention weight 0 (in
        bfloat16 on a CPU they are masked rather than sliced off, see below). `last_only`: the
        last position's logits alone (a prefill needs no more; the LM head over
        a long prompt would cost more than the prompt's layers). `head`: score
        only its tokens (logits over `head.token_ids`, not the vocabulary). `hidden_states`: also return
        the residual stream entering each layer and leaving the last (`ssd.methods.clasp`), as `(logits, states)`:
        returned, not appended to a list the caller passes, because accelerate's hooks hand `forward` copies
        of its list arguments.
        `tree` ([T, T] bool, `ssd.methods.tree.ancestor_mask`): the rows are a token tree, not a sequence; row r
        sits at position start_pos + its depth, sees its ancestors only, and writes slot start_pos + r.
        """
        length = input_ids.shape[1]
        end = start_pos + length
        if end > cache.max_len:
            raise ValueError(f"positions up to {end} do not fit a cache of {cache.max_len}")
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rope_tables()
        if tree is None:
            cos, sin = cos[start_pos:end], sin[start_pos:end]
        else:
            positions = start_pos - 1 + tree.sum(dim=-1)  # a row sees itself and each ancestor once
            cos, sin = cos[positions], sin[positions]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        # Query i sits at position start_pos+i and sees keys up to it. Where `Linear` makes products
        # row-invariant (bfloat16 on a CPU), every pass after the prefill (steps, verifications,
        # drafts) attends over the whole cache, masked: a sum over more keys, zero weights included,
        # rounds differently, and a verified token's logits must equal a step's. oneDNN's bfloat16
        # batched product is also faster over the whole cache than over one cut short, which it copies.
        row_invariant = needs_row_invariance(x)
        whole_cache = start_pos > 0 and row_invariant
        key_len = cache.max_len if whole_cache else end
        draft = draft or Draft()
        precision = draft.precision
        low_bit = self.low_bit_layers(precision)
        graphs = self.pass_graphs(start_pos, length, cache.max_len, row_invariant)
        layout = tree_layout(tree, start_pos) if tree is not None else None
        states = []
        for i, layer in enumerate(self.model.layers):
            if hidden_states:
                states.append(x)
            x = layer(
                x, cos, sin, cache.keys[i], cache.values[i], start_pos, key_len, i in draft.attention, i in draft.mlp,
                low_bit[i], graphs, layout,
            )
        if hidden_states:
            states.append(x)
        if last_only:
            x = x[:, -1:]
        x = self.model.norm(x)
        if head is None and precision is None:
            logits = self.lm_head(x).float()  # through accelerate's hook when the model is dispatched
        else:
            # The draft heads' weights are rows of the LM head or its int8 copy, on its device, not modules
            # that accelerate's hooks move inputs for (a split model may put the norm on another device).
            x = x.to(self.lm_head.weight.device)
            logits = (head(x, precision) if head is not None else self.low_bit.lm_head_int8(x)).float()
        return (logits, states) if hidden_states else logits


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 and Qwen2.5: LLaMA with biases on the q, k and v projections (`projection_biases`)."""

    config_class = Qwen2Config
