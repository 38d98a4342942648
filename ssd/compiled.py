"""The layer graphs that passes after the prefill run through `torch.compile`.

Every layer shares the graphs: one for a whole layer, and one per block
(attention, MLP) for drafts that skip the other
(`LlamaForCausalLM.compile_blocks` builds them, `LlamaDecoderLayer.forward`
picks one).

On a 2-core CPU in float32, a one-token step spends a quarter of its time
outside the matrix products, in ~600 small ops (norms, rotary, residual adds,
attention glue) and the Python around them; compiled, they fuse. A graph per
layer rather than per model: the weights are its inputs, so one graph serves
all layers (PyTorch's "regional compilation"), compiles in seconds rather than
minutes, and serves drafts as well, whatever their skip set (SWIFT changes it
every few steps) and precision (a low-bit copy's kernels are a graph of their
own). A layer runs as one graph rather than two where nothing is skipped: each
call costs ~70 us of Dynamo's Python on a 2-core AMD EPYC, and SmolLM2's int4
draft pass at 1084 positions took 21.5 ms so, 24.4 ms as 60 block calls (step
41.3 vs 43.4 ms, one process). Shapes are dynamic: one graph for one-token
passes, one for longer ones (in float32 up to `Linear.products.padded_rows`
rows; in bfloat16 on a CPU every length, see `LlamaForCausalLM.forward`). A
prefill, and in float32 longer passes, stay eager: they are bound by their
products.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ssd.draft import Draft
from ssd.linear import needs_row_invariance


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
        # Sizes 0 and 1 are specialised: 2 rows stand for more, position 2 for any later one. Where
        # passes are kept row-invariant (`forward`), position 1 runs compiled too. A draft at the full
        # precision runs the full model's graphs. Skipping layer 0's attention, then its MLP, runs
        # each single-block graph.
        positions = (1, 2) if needs_row_invariance(model.lm_head.weight) else (2,)
        drafts = [Draft(precision=precision)] if "layer" in kinds else []
        drafts += [Draft({0}, precision=precision), Draft(mlp={0}, precision=precision)] if "blocks" in kinds else []
        # Dynamo keeps one list of graphs per function, shared by every model in the process (two
        # dtypes side by side in the bench, or in one test worker); past its limit (8) it would run
        # new shapes eager. The graphs are all made here, so the limit is lifted here only.
        with torch._dynamo.config.patch(recompile_limit=64):
            for draft in drafts:
                cache = model.new_cache(8)
                for position in positions:
                    for length in (1, 2):
                        model(torch.zeros(1, length, dtype=torch.long, device=model.device), cache, position, draft=draft)
        self.warm.update((kind, precision) for kind in kinds)
