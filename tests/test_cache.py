"""The KV-cache invariant: below the committed length the cache holds what a full prefill gives,
and the full model never reads a key or value a draft wrote."""

import torch
from helpers import random_skip_set

from ssd import Draft
from ssd.core.decoding import prefill, verify_drafts
from ssd.core.self_draft import draft_tokens


def poison_beyond(cache, committed: int) -> None:
    """NaN at every position >= committed in every layer: any read of it shows up as NaN."""
    for keys, values in zip(cache.keys, cache.values):
        keys[:, :, committed:] = float("nan")
        values[:, :, committed:] = float("nan")


@torch.no_grad()
def test_cache_matches_prefill_after_rejections(embedded, prompts):
    model, tokenizer = embedded
    draft = Draft.skipping(*random_skip_set(model.num_layers, 0.4, seed=0))
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    steps, max_new = 12, 80
    cache = model.new_cache(input_ids.shape[1] + max_new)
    tokens = [int(prefill(model, input_ids, cache).argmax())]
    committed = input_ids.shape[1]
    rejections = 0
    for _ in range(steps):
        poison_beyond(cache, committed)  # whatever earlier steps left beyond n is stale
        drafts, _, _ = draft_tokens(model, draft, cache, tokens[-1], committed, 5, 0.0, None, None)
        poison_beyond(cache, committed)  # ... and so is everything the draft wrote
        verify_input = torch.tensor([[tokens[-1], *drafts]])
        target_logits = model(verify_input, cache, committed)[0]
        assert torch.isfinite(target_logits).all(), "the full model read a stale or drafted key/value"

        # The verification logits are the full model's over the whole sequence.
        sequence = torch.cat([input_ids[0], torch.tensor(tokens + drafts)])[None]
        full = model(sequence, model.new_cache(sequence.shape[1]), 0)[0, committed:]
        torch.testing.assert_close(target_logits, full, atol=1e-4, rtol=1e-4)

        accepted, next_token = verify_drafts(target_logits, drafts, None, None, None)
        rejections += accepted < len(drafts)
        committed += accepted + 1
        tokens += drafts[:accepted] + [next_token]

        # Below the committed length: exactly the keys and values of a plain prefill.
        reference = model.new_cache(committed)
        prefill(model, torch.cat([input_ids[0], torch.tensor(tokens[:-1])])[None], reference)
        for layer in range(model.num_layers):
            torch.testing.assert_close(cache.keys[layer][:, :, :committed], reference.keys[layer], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(cache.values[layer][:, :, :committed], reference.values[layer], atol=1e-5, rtol=1e-4)
    assert rejections >= 3, "the skip set should be poor enough to exercise rollback"


@torch.no_grad()
def test_draft_writes_only_computed_layers_beyond_committed(embedded, prompts):
    model, tokenizer = embedded
    attention, mlp = random_skip_set(model.num_layers, 0.4, seed=1)
    input_ids = tokenizer(prompts[1], return_tensors="pt").input_ids
    cache = model.new_cache(input_ids.shape[1] + 8)
    token = int(prefill(model, input_ids, cache).argmax())
    before = [k.clone() for k in cache.keys]
    committed = input_ids.shape[1]
    drafts, _, _ = draft_tokens(model, Draft.skipping(attention, mlp), cache, token, committed, 4, 0.0, None, None)
    for layer in range(model.num_layers):
        assert torch.equal(cache.keys[layer][:, :, :committed], before[layer][:, :, :committed])
        wrote = not torch.equal(cache.keys[layer][:, :, committed:], before[layer][:, :, committed:])
        assert wrote == (layer not in attention), f"layer {layer}"
