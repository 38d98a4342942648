"""A model's fast paths, as one mixin of `LlamaForCausalLM`: packed bfloat16 weights (`ssd.fast.packed`),
compiled layer graphs (`ssd.fast.compiled`), the drafts' low-bit copies (`ssd.fast.low_bit`) and the
trimmed draft head (`ssd.fast.draft_head`). None of them changes a token (docs/numerics.md says where).

The network reads these through two calls in its forward, `pass_graphs` (which graphs run a pass) and
`low_bit_layers` (which copies a draft reads); everything else here is set up before a generation.
"""

from __future__ import annotations

import torch

from ssd.fast.compiled import CompiledLayers, LayerGraphs, runs_compiled
from ssd.fast.cpu import Float32Products
from ssd.fast.draft_head import DraftHead, draft_head
from ssd.fast.linear import Linear
from ssd.fast.low_bit import LowBitCopies, LowBitLayer
from ssd.fast.packed import PackedWeight, pack


class FastKernels:
    """Mixin: the model's packed weights, compiled graphs and low-bit copies. The model class names its
    eager layer functions in `layer_graphs` (what `compile_blocks` compiles)."""

    layer_graphs: LayerGraphs

    def init_kernels(self) -> None:
        self.low_bit = LowBitCopies()  # the drafts' low-bit weights, by precision, built on first use
        self._compiled: CompiledLayers | None = None  # see compile_blocks

    @property
    def products(self) -> Float32Products:
        """How every `Linear` runs float32 products on this CPU (`ssd.fast.cpu.float32_products`)."""
        return self.lm_head.products

    # --- what a pass reads --------------------------------------------------

    def pass_graphs(self, start_pos: int, length: int, cache_len: int, row_invariant: bool) -> LayerGraphs:
        """The functions that run each layer of this pass: compiled graphs where they hold
        (`runs_compiled`), else the eager ones."""
        if self._compiled is not None and runs_compiled(start_pos, length, cache_len, row_invariant,
                                                        self.products.padded_rows):
            return self._compiled.graphs
        return self.layer_graphs

    def low_bit_layers(self, precision: str | None) -> list[LowBitLayer | None]:
        """Each layer's copies at `precision` (built on first use); None: the model's own weights."""
        return [None] * self.num_layers if precision is None else self.low_bit.at(self, precision)

    def draft_head(self, token_ids: torch.Tensor) -> DraftHead:
        """A head scoring only `token_ids` (unique ids, any order), see `ssd.fast.draft_head`."""
        return draft_head(self.lm_head.weight, self.low_bit.lm_head_int8, token_ids)

    # --- preparing drafts ----------------------------------------------------

    def prepare_precision(self, precision: str | None) -> None:
        """Build what a draft at `precision` runs before it is timed: its low-bit copies and, on a
        compiled model, its graphs (passes would build them on first use)."""
        if precision is not None:
            self.low_bit.at(self, precision)
        if self.compiled:
            self._compiled.warm_up(self, precision, blocks=True)  # once per precision

    def prepare_trees(self) -> None:
        """On a compiled model, compile the graph that verifies token trees (`ssd.methods.tree`) now, before a
        generation is timed; a tree proposer's maker calls it. Eager, nothing to do."""
        if self.compiled:
            self._compiled.warm_up_trees(self)

    # --- packed weights ------------------------------------------------------

    def pack_weights(self, enabled: bool = True) -> None:
        """Run the bfloat16 products of every `Linear` (the layers' and the LM head) on copies of their
        weights packed once in oneDNN's layout (`ssd.fast.packed`): faster on a CPU, for as much memory
        again as those weights (`packed_nbytes`). `enabled=False` drops the copies. A compiled model
        compiles its graphs again (`compile_blocks`).
        """
        linears = self.linears()
        copies: list[PackedWeight | None] = [None] * len(linears)
        if enabled:  # every copy first: a weight that cannot be packed leaves the model as it was
            copies = [pack(module.weight) for module in linears]
        for module, copy in zip(linears, copies):
            module.packed = copy
        if self.compiled:
            self.compile_blocks()

    def linears(self) -> list[Linear]:
        """Every `Linear`: the layers' projections and the LM head."""
        return [module for module in self.modules() if isinstance(module, Linear)]

    @property
    def weights_packed(self) -> bool:
        return self.lm_head.packed is not None

    @property
    def packed_nbytes(self) -> int:
        """Memory the packed copies take."""
        return sum(module.packed.nbytes for module in self.linears() if module.packed)

    # --- compilation ---------------------------------------------------------

    def compile_blocks(self, enabled: bool = True) -> None:
        """Run every pass after the prefill (steps, verifications, drafts) through `torch.compile`
        graphs that every layer shares (`ssd.fast.compiled`), compiled here for the full model and the
        default draft, and for another draft precision when a draft first asks for it
        (`prepare_draft`), so that no timed generation pays for them. `enabled=False`: eager."""
        self._compiled = None
        if not enabled:
            return
        self.rope_tables()  # built now: the graphs would otherwise guard on the table not existing yet
        self._compiled = CompiledLayers(self.layer_graphs.compiled())
        self._compiled.warm_up(self, None)
        self._compiled.warm_up(self, self.default_draft.precision, blocks=True)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None
