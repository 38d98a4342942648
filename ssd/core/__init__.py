"""Draft & Verify itself: the network over its KV cache with a draft as an argument, the decoding loops,
the self-draft with its adaptive threshold, the proposer protocol, sampling, and the search for the
sub-layers to skip. Read first: modeling_llama.py, decoding.py, self_draft.py (docs/design.md).

Nothing here imports `ssd.methods` or `ssd.tools`; the CPU and GPU kernels come in through `ssd.fast`."""
