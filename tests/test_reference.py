"""The paper's `essg` against the reference code's loop (dilab-zju/self-speculative-decoding, decoding.py):
the same skip set and settings, in float32, give the same tokens, the same drafted and accepted counts and the
same final threshold, on every prompt.

`reference_essg` is `exact_self_speculative_generate` as published, written over ssd's network (a `KVCache`
and positions instead of transformers' `past_key_values`): the first token by the full model, then each step
drafts from the last token until the draft's top probability falls under the threshold or the output is
about to be full (`step + step_draft + 2 >= max_new_tokens`, checked after a token is drafted: so it drafts
one token even when one is left), verifies `[last, drafts]` in one pass, keeps the longest matching prefix
and the full model's token after it, and updates the threshold every `auto_parameters[0]` verifications."""

import pytest
import torch
from helpers import random_skip_set

import ssd
from ssd.core.decoding import generation_cache
from ssd.core.skip_layers import read_skip_layers
from ssd.loading.keys import model_key
from ssd.methods.paper import PAPER_CONFIG, exact_self_speculative_generate, paper_draft

MAX_NEW_TOKENS = 64


@torch.no_grad()
def reference_essg(model, draft, input_ids, max_new_tokens, max_step_draft, th_stop_draft, auto_th_stop_draft,
                   auto_parameters):
    """The reference's greedy loop; returns (tokens, matched, drafted, final threshold)."""
    cache = generation_cache(model, input_ids, max_new_tokens)
    generate_ids = [int(model(input_ids, cache, 0)[0, -1].argmax())]
    position = input_ids.shape[1]  # where the last generated token goes: not yet in the cache
    step, n_matched, n_drafted, step_verify, tmp_matchness = 1, 0, 0, 0, 0.0
    while step < max_new_tokens:
        draft_ids = [generate_ids[-1]]
        for step_draft in range(max_step_draft):
            logits = model(torch.tensor([[draft_ids[-1]]]), cache, position + step_draft, draft=draft)[0, -1]
            probability, token = logits.softmax(-1).max(-1)
            draft_ids.append(int(token))
            if probability.item() < th_stop_draft or step + step_draft + 2 >= max_new_tokens:
                break
        drafted = step_draft + 1
        output_ids = model(torch.tensor([draft_ids]), cache, position)[0].argmax(-1).tolist()
        max_matched = 1
        while max_matched <= drafted and output_ids[max_matched - 1] == draft_ids[max_matched]:
            max_matched += 1
        generate_ids += output_ids[:max_matched]
        position += max_matched
        step += max_matched
        n_matched += max_matched - 1
        n_drafted += drafted
        step_verify += 1
        if auto_th_stop_draft and step_verify % auto_parameters[0] == 0:
            tmp_matchness = auto_parameters[1] * tmp_matchness + (1 - auto_parameters[1]) * ((max_matched - 1) / drafted)
            if tmp_matchness < auto_parameters[2]:
                new_th_stop_draft = th_stop_draft + auto_parameters[3]
            elif drafted == max_step_draft:
                new_th_stop_draft = th_stop_draft
            else:
                new_th_stop_draft = th_stop_draft - auto_parameters[3]
            th_stop_draft = auto_parameters[4] * th_stop_draft + (1 - auto_parameters[4]) * new_th_stop_draft
    return generate_ids[:max_new_tokens], n_matched, n_drafted, th_stop_draft


# The setting (12 of 60 sub-layers, 12 tokens a step, 0.6 adaptive); a fixed low threshold; and
# auto_parameters whose target and smoothing differ, updated every other verification (the reference reads
# them by position: [every, b1, target, step, b2]).
SETTINGS = [
    dict(max_step_draft=12, th_stop_draft=0.6, auto_th_stop_draft=True, auto_parameters=(1, 0.5, 0.9, 0.01, 0.9)),
    dict(max_step_draft=8, th_stop_draft=0.2, auto_th_stop_draft=False, auto_parameters=(1, 0.5, 0.9, 0.01, 0.9)),
    dict(max_step_draft=12, th_stop_draft=0.6, auto_th_stop_draft=True, auto_parameters=(2, 0.3, 0.8, 0.05, 0.6)),
]


# The paper's setting on 6 prompts (2 of each task, as the check), its tokens against base's too; the
# others on one prompt each.
@pytest.mark.parametrize("setting, n_prompts", zip(SETTINGS, (6, 1, 1)), ids=["paper", "fixed-0.2", "every-2"])
def test_essg_counts_equal_the_reference_loop(embedded, prompts, base_tokens, setting, n_prompts):
    model, tokenizer = embedded
    draft = ssd.Draft.skipping(*random_skip_set(model.num_layers, 0.2, seed=7))  # 12 of 60 sub-layers
    config = PAPER_CONFIG.replace(**setting)
    for prompt in (prompts[:2] + prompts[3:5] + prompts[6:8])[:n_prompts]:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        tokens, matched, drafted, threshold = reference_essg(model, draft, input_ids, MAX_NEW_TOKENS, **setting)
        result = exact_self_speculative_generate(model, input_ids, MAX_NEW_TOKENS, None, config, draft=draft)
        assert result.tokens == tokens
        assert (result.num_accepted_tokens, result.num_drafted_tokens) == (matched, drafted), prompt[:60]
        assert result.th_stop_draft == threshold
        assert result.drafted_by_kind == {"draft": drafted}  # the self-draft alone: no lookups, no GGUF draft
        if setting is SETTINGS[0]:
            assert tokens == base_tokens(input_ids, MAX_NEW_TOKENS)


def test_essg_through_generate_is_the_paper_setting(embedded, prompts):
    """`ssd.generate(method="essg")` runs the self-draft alone over the whole vocabulary: the same counts as
    the reference loop with the paper's settings, with the draft given."""
    model, tokenizer = embedded
    draft = ssd.Draft.skipping(*random_skip_set(model.num_layers, 0.2, seed=7))
    input_ids = tokenizer(prompts[0], return_tensors="pt").input_ids
    out = ssd.generate(model, input_ids, method="essg", draft=draft, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=[],
                       return_dict_in_generate=True)
    tokens, matched, drafted, _ = reference_essg(model, draft, input_ids, MAX_NEW_TOKENS, **SETTINGS[0])
    assert (out.tokens, out.num_accepted_tokens, out.num_drafted_tokens) == (tokens, matched, drafted)


def test_the_paper_draft_is_the_models_paper_kind_entry(embedded, tmp_path):
    """`essg` drafts with `<key>/paper`, or a `<key>` entry that names no draft precision (the published
    LLaMA-2 sets, whose hub ids end in -hf), on the model's own weights; with neither, ssd's error says how
    to make one."""
    model, _ = embedded
    path = tmp_path / "skip_layers.json"
    ssd.save_skip_layers("smollm2-135m-instruct", [], [], path, draft_precision="int4")  # a joint entry: not the paper's
    with pytest.raises(KeyError, match="no paper-kind skip set for 'smollm2-135m-instruct'.*precisions=\\[None\\]"):
        paper_draft(model, path)
    ssd.save_skip_layers("smollm2-135m-instruct/paper", [3, 5], [4], path)
    assert paper_draft(model, path) == ssd.Draft.skipping([3, 5], [4])
    assert model_key("meta-llama/Llama-2-13b-hf") == "llama-2-13b" and "llama-2-13b" in read_skip_layers()
