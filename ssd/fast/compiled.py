"""The layer graphs that passes after the prefill run through `torch.compile`.

Every layer shares the graphs: one for a whole layer, and one per block
(attention, MLP) for drafts that skip the other
(`LlamaForCausalLM.compile_blocks` builds them, `LlamaDecoderLayer.forward`
picks one).

Outside the matrix products, a one-token step runs hundreds of small ops (norms,
rotary, residual adds, attention glue) and the Python around them; compiled, they
fuse. A graph per layer rather than per model: the weights are its inputs, so one
graph serves all layers (PyTorch's "regional compilation"), compiles in seconds
rather than minutes, and serves drafts as well, whatever their skip set (SWIFT
changes it every few steps) and precision (a low-bit copy's kernels are a graph of
their own). A layer runs as one graph rather than two where nothing is skipped:
each graph call costs Dynamo's Python. Shapes are dynamic: one graph for one-token
passes, one for longer ones (in float32 up to `Linear.products.padded_rows` rows;
in bfloat16 on a CPU every length, see `LlamaForCausalLM.forward`). A prefill, and
in float32 longer passes, stay eager: they are bound by their products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ssd.core.draft import Draft
from ssd.fast import cpu
from ssd.fast.linear import INVARIANT_ROWS, needs_row_invariance


@dataclass(frozen=True)
class LayerGraphs:
    """What runs a layer: the whole layer, or one block of it (a draft skipping the other)."""

    layer: Callable
    attention: Callable
    mlp: Callable

    def compiled(self) -> LayerGraphs:
        """These through `torch.compile`, shapes dynamic; shared by every layer (weights are inputs)."""
        functions = (self.layer, self.attention, self.mlp)
        return LayerGraphs(*(torch.compile(function, dynamic=True) for function in functions))


@dataclass
class CompiledLayers:
    """A model's compiled graphs, and which of them have run once (a graph compiles on its first call)."""

    graphs: LayerGraphs
    warm: set[tuple[str, str | None]] = field(default_factory=set)  # (graph kind, draft precision)

    @torch.no_grad()
    def warm_up(self, model, precision: str | None, blocks: bool = False) -> None:
        """Compile the layer graphs for `precision` (None: the full model's), and with `blocks` the
        single-block ones a draft that skips sub-layers runs, on a scratch cache; what is warm already
        is not run again."""
        kinds = [kind for kind in ("layer", "blocks")[: 1 + blocks] if (kind, precision) not in self.warm]
        if not kinds:
            return
        # Skipping layer 0's attention, then its MLP, runs each single-block graph; a draft at the full
        # precision runs the full model's graphs.
        drafts = [Draft(precision=precision)] if "layer" in kinds else []
        drafts += [Draft({0}, precision=precision), Draft(mlp={0}, precision=precision)] if "blocks" in kinds else []
        # Dynamo keeps one list of graphs per function, shared by every model in the process (two
        # dtypes side by side in the bench, or in one test worker); past its limit (8) it would run
        # new shapes eager. The graphs are all made here, so the limit is lifted here only.
        with torch._dynamo.config.patch(recompile_limit=64):
            for draft in drafts:
                positions, lengths = warm_shapes(model, (1, 2), draft.is_full_model)
                cache = model.new_cache(2 * INVARIANT_ROWS + 8)
                for position in positions:
                    for length in lengths:
                        model(torch.zeros(1, length, dtype=torch.long, device=model.device), cache, position, draft=draft)
        self.warm.update((kind, precision) for kind in kinds)

    @torch.no_grad()
    def warm_up_trees(self, model) -> None:
        """Compile the full model's layer graph for token-tree verifications (`ssd.methods.tree`): a tree's
        mask is an input of its own, so its graph is another."""
        if ("tree", None) in self.warm:
            return
        # Two sizes: on Qwen2.5-Coder-1.5B the first graph came out specialised to its size, and the
        # second size makes Dynamo compile one for any.
        positions, lengths = warm_shapes(model, (2, 3), full_model=True)
        with torch._dynamo.config.patch(recompile_limit=64):
            cache = model.new_cache(2 * INVARIANT_ROWS + 8)
            for position in positions:
                for length in lengths:
                    tree = torch.ones(length, length, dtype=torch.bool, device=model.device).tril()
                    model(torch.zeros(1, length, dtype=torch.long, device=model.device), cache, position, tree=tree)
        self.warm.add(("tree", None))


def warm_shapes(model, lengths: tuple[int, ...], full_model: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The start positions and row counts a warm-up runs so that every later pass finds its graph. Sizes
    0 and 1 are specialised: 2 rows stand for more, position 2 for any later one; where passes are kept
    row-invariant (`forward`), position 1 runs compiled too. On AMX the full model's passes of more than
    `INVARIANT_ROWS` rows (long verifications, trees) run their products in halves (`Linear`), a graph
    of their own."""
    row_invariant = needs_row_invariance(model.lm_head.weight)
    positions = (1, 2) if row_invariant else (2,)
    if full_model and row_invariant and cpu.AMX:
        lengths = (*lengths, INVARIANT_ROWS + 1)
    return positions, lengths


def runs_compiled(start_pos: int, length: int, cache_len: int, row_invariant: bool, padded_rows: int) -> bool:
    """Whether a pass of `length` tokens at `start_pos` runs the compiled graphs.

    The graphs hold for passes that end before the cache does (a generation's never fill it), after
    position 1 in float32: a pass at position 1 would recompile (seconds) mid-generation. Passes of
    more than `padded_rows` rows (`Linear.products`: long lookups, SWIFT's windows) run eager in
    float32: bound by their products, they are no slower so, and a third graph would add to every
    load's compile time. Where
    passes are kept row-invariant (bfloat16 on a CPU) every pass after the prefill takes the graphs
    (one for one row, one for more; position 1 has its own, compiled at load), so that a verified
    token's logits equal a step's bit for bit: compiled and eager ops round differently.
    """
    if start_pos + length >= cache_len:
        return False
    return start_pos > 0 if row_invariant else start_pos > 1 and length <= padded_rows
