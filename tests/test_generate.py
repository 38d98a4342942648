"""`ssd.generate`: transformers' interface (inputs, GenerationConfig, EOS, streamers, return values),
clear refusals, and seeded sampling that reproduces. Real embedded model throughout."""

import itertools
import random
import threading
from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationConfig, TextIteratorStreamer
from transformers.generation.streamers import BaseStreamer

import ssd
import ssd.core.decoding
from ssd.methods.swift import SwiftConfig, SwiftOptimizer

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
REPEATING = "one two three four five six seven eight nine ten. one two three four five six seven eight nine ten. one two"


class RecordingStreamer(BaseStreamer):
    """Keeps every `put` as a list of ids, and whether `end` came."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.flatten().tolist())

    def end(self):
        self.ended = True


def test_string_ids_and_chat_inputs(embedded):
    model, tokenizer = embedded
    ids = tokenizer("def fib(n):", return_tensors="pt").input_ids
    from_text = ssd.generate(model, "def fib(n):", max_new_tokens=8, eos_token_id=[])
    from_ids = ssd.generate(model, ids, max_new_tokens=8, eos_token_id=[])
    from_list = ssd.generate(model, ids[0].tolist(), max_new_tokens=8, eos_token_id=[])
    assert from_text.shape == (1, ids.shape[1] + 8) and from_text.dtype == torch.long
    assert torch.equal(from_text, from_ids) and torch.equal(from_text, from_list)
    assert torch.equal(from_text[:, : ids.shape[1]], ids)

    chat_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    from_chat = ssd.generate(model, CHAT, max_new_tokens=8, eos_token_id=[])
    assert torch.equal(from_chat[:, : chat_ids.shape[1]], chat_ids)


def test_stops_at_eos_checked_on_new_tokens_only(embedded):
    model, tokenizer = embedded
    eos = model.generation_config.eos_token_id
    out = ssd.generate(model, CHAT, max_new_tokens=40, return_dict_in_generate=True)
    prompt_length = out.sequences.shape[1] - len(out.tokens)
    assert eos in out.sequences[0, :prompt_length].tolist()  # the chat template ends turns with EOS: not a stop
    assert out.tokens[-1] == eos and eos not in out.tokens[:-1] and len(out.tokens) < 40
    assert "Paris" in tokenizer.decode(out.tokens)
    base = ssd.generate(model, CHAT, max_new_tokens=40, method="base")
    assert torch.equal(base, out.sequences)


def test_every_id_of_an_eos_list_stops(embedded):
    model, _ = embedded
    free = ssd.generate(model, "def fib(n):", max_new_tokens=12, eos_token_id=[], return_dict_in_generate=True).tokens
    stop = free[5]
    first = free.index(stop)
    never = next(i for i in range(model.config.vocab_size - 1, 0, -1) if i not in free)  # an id the text never holds
    for method in ("base", "hybrid", "essg"):
        cut = ssd.generate(model, "def fib(n):", max_new_tokens=12, eos_token_id=[never, stop], method=method,
                           return_dict_in_generate=True).tokens
        assert cut == free[: first + 1], method


def test_keyword_arguments_override_the_config(embedded):
    model, _ = embedded
    config = GenerationConfig(max_new_tokens=5, eos_token_id=[])
    assert len(ssd.generate(model, "Hello", config, return_dict_in_generate=True, method="base").tokens) == 5
    assert len(ssd.generate(model, "Hello", config, max_new_tokens=7, return_dict_in_generate=True).tokens) == 7
    assert config.max_new_tokens == 5  # the caller's config is not modified


def test_return_dict_holds_sequences_and_statistics(embedded):
    model, _ = embedded
    # Without llama.cpp's draft (where the llama extra is installed it drafts this repeating text before lookups do).
    out = ssd.generate(model, REPEATING, max_new_tokens=24, eos_token_id=[], return_dict_in_generate=True,
                       gguf_draft=None)
    assert isinstance(out, ssd.GenerateOutput)
    assert out.sequences[0, -24:].tolist() == out.tokens
    assert out.num_looked_up_tokens > 0 and out.num_accepted_tokens > 0
    assert out.matchness == out.num_accepted_tokens / out.num_drafted_tokens
    assert out.num_verifications < 24 and out.time > 0 and out.swift is None


@pytest.mark.parametrize("kwargs, message", [
    ({"num_beams": 2}, "num_beams"),
    ({"repetition_penalty": 1.1}, "repetition_penalty"),
    ({"stop_strings": ["\n"]}, "stop_strings"),
    ({"min_new_tokens": 3}, "min_new_tokens"),
    ({"num_return_sequences": 2}, "num_return_sequences"),
    ({"output_scores": True}, "output_scores"),
    ({"prompt_lookup_num_tokens": 4}, "prompt_lookup_num_tokens"),
    ({"use_cache": False}, "use_cache"),
    ({"logits_processor": []}, "logits_processor"),
    ({"stopping_criteria": []}, "stopping_criteria"),
    ({"method": "essg", "do_sample": True}, "essg is greedy"),
    ({"method": "beam"}, "method must be one of"),
    ({"method": "base", "max_step_draft": 4}, "base does not draft"),
    ({"method": "essg", "swift": SwiftConfig()}, "for method='swift'"),
    ({"max_step_draft": 0}, "max_step_draft"),
    ({"do_sample": True, "temperature": 0.0}, "temperature"),
])
def test_unsupported_options_are_refused(embedded, kwargs, message):
    model, _ = embedded
    with pytest.raises(ValueError, match=message):
        ssd.generate(model, "Hello", max_new_tokens=4, **kwargs)


def test_bad_inputs_are_refused(embedded, monkeypatch):
    model, _ = embedded
    for inputs, message in [("", "empty"), ([{"content": "no role"}], "role"), (torch.tensor([[0.5]]), "integers"),
                            (torch.ones(2, 3, dtype=torch.long), "batch size 1")]:
        with pytest.raises(ValueError, match=message):
            ssd.generate(model, inputs, max_new_tokens=4)
    monkeypatch.setattr(model, "tokenizer", None)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        ssd.generate(model, "Hello", max_new_tokens=4)


def test_every_decoding_loop_refuses_a_batch(embedded):
    model, _ = embedded
    batch = torch.ones(2, 3, dtype=torch.long)
    loops = [
        lambda: ssd.base_generate(model, batch, 4),
        lambda: ssd.exact_self_speculative_generate(model, batch, 4),
        lambda: ssd.self_speculative_sample(model, batch, 4),
        lambda: ssd.swift_generate(model, batch, 4, None, SwiftOptimizer(model, SwiftConfig())),
    ]
    for loop in loops:
        with pytest.raises(ValueError, match="batch size 1"):
            loop()


@pytest.mark.parametrize("method", ["base", "hybrid", "essg", "sss"])
def test_streamer_gets_the_prompt_then_each_verified_chunk(embedded, method):
    model, _ = embedded
    streamer = RecordingStreamer()
    kwargs = {"do_sample": True, "generator": torch.Generator().manual_seed(0)} if method == "sss" else {}
    out = ssd.generate(model, REPEATING, max_new_tokens=24, eos_token_id=[], method=method, streamer=streamer,
                       return_dict_in_generate=True, **kwargs)
    prompt, *chunks = streamer.puts
    assert streamer.ended and prompt == out.sequences[0, : -24].tolist()
    assert list(itertools.chain(*chunks)) == out.tokens
    if method == "base":
        assert all(len(chunk) == 1 for chunk in chunks)
    else:  # the prefill's token, then one chunk per verification, accepted drafts included
        assert len(chunks) == out.num_verifications + 1
    if method == "hybrid":  # the prompt repeats itself, so lookups are accepted several tokens at a time
        assert max(map(len, chunks)) > 1


def test_text_iterator_streamer(embedded):
    model, tokenizer = embedded
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.update(ids=ssd.generate(model, CHAT, max_new_tokens=40, streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    prompt_length = len(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"])
    assert text == tokenizer.decode(result["ids"][0, prompt_length:], skip_special_tokens=True) and "Paris" in text


def test_seeded_sampling_reproduces_whatever_the_timing(embedded, monkeypatch):
    """The gate chooses step kinds while sampling; with wall time it consumed the random stream
    differently run to run. A clock that jumps at random must not change a seeded sample."""
    model, _ = embedded

    def sample(seed):
        return ssd.generate(model, REPEATING, max_new_tokens=32, eos_token_id=[], do_sample=True, top_k=0,
                            generator=torch.Generator().manual_seed(seed))

    first = sample(1)
    jitter = random.Random(0)
    clock = itertools.accumulate(jitter.expovariate(10.0) for _ in iter(int, 1))
    monkeypatch.setattr(ssd.core.decoding, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert torch.equal(sample(1), first) and torch.equal(sample(1), first)
    assert not torch.equal(sample(2), first)
