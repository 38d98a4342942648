"""Evaluating decoding methods on the paper's tasks: the methods, their settings, and generating.

The notebooks `evaluate_sum.ipynb` and `evaluate_code.ipynb` are thin calls
into this module, `ssd.tools.scoring` (ROUGE-2, HumanEval) and `ssd.tools.reports`
(tables, plots) and `ssd.tools.results` (the result files). Methods run alternately per
example (not one method over all examples, then the next) so that drift of a shared machine falls on all
methods alike. Speedup is a method's tokens per second over its baseline's
(greedy methods against greedy `base`, sampled ones against sampled `base`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig

from ssd.core.decoding import check_max_new_tokens
from ssd.core.skip_layers import apply_skip_layers, hand_made_set, load_draft
from ssd.generation import encode_inputs, generate, method_names
from ssd.loading.checkpoints import EMBEDDED_KEY, NAMED_CHECKPOINTS
from ssd.loading.keys import model_key
from ssd.methods.hybrid import TRIMMED_DRAFT_VOCAB
from ssd.methods.paper import paper_draft
from ssd.tools.data import Example
from ssd.tools.prompts import WARM_UP
from ssd.tools.results import ResultsFile, as_loaded, draft_setup, provenance
from ssd.tools.timing import WARM_UP_TASK, Run, run_side_by_side


@dataclass(frozen=True)
class Method:
    """One decoding configuration to evaluate.

    `th_stop_draft` is the fixed draft-exit threshold, or the starting one
    when `adaptive`; an adaptive threshold carries over from one example to
    the next, as in the paper's evaluation.
    """

    name: str
    generate_fn: str = "base"
    th_stop_draft: float = 0.6
    adaptive: bool = False
    max_step_draft: int = 12
    do_sample: bool = False
    samples: int = 1  # generations per example (pass@k needs several)
    baseline: str = "base"  # the method whose speed this one's is divided by
    draft_options: dict = field(default_factory=dict)  # further `DraftConfig` settings, by name
    draft_precision: str | None = None  # essg/sss: the paper's draft on these low-bit weights (None: the model's)

    def __post_init__(self):
        if self.generate_fn not in method_names():
            raise ValueError(f"method {self.name!r}: generate_fn must be one of {method_names()}, got {self.generate_fn!r}")
        if self.generate_fn == "essg" and self.do_sample:
            raise ValueError(f"method {self.name!r}: essg is greedy; sample with sss")
        if self.generate_fn == "sss" and not self.do_sample:
            raise ValueError(f"method {self.name!r}: sss samples; use essg for greedy")
        if self.draft_precision is not None and self.generate_fn not in ("essg", "sss"):
            raise ValueError(f"method {self.name!r}: draft_precision is for essg and sss (the paper's draft at a "
                             f"low precision); {self.generate_fn} drafts with the model's default draft")
        if self.samples < 1:
            raise ValueError(f"method {self.name!r}: samples must be >= 1, got {self.samples}")

    @property
    def drafts(self) -> bool:
        return self.generate_fn != "base"


@dataclass(frozen=True)
class GenerationSettings:
    """What every method shares: length, stopping, sampling transform, seed."""

    max_new_tokens: int = 128
    early_stop: bool = True
    temperature: float = 0.6
    top_k: int = 0
    top_p: float = 0.95
    seed: int = 42

    def __post_init__(self):
        check_max_new_tokens(self.max_new_tokens)
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


def standard_methods(
    thresholds=(0.2, 0.4, 0.6, 0.8),
    adaptive: bool = True,
    sampling: bool = True,
    start_threshold: float = 0.6,
    max_step_draft: int = 12,
    samples: int = 1,
    draft_options: dict | None = None,
) -> list[Method]:
    """The paper's set: greedy base; essg at fixed thresholds and adaptive;
    sampled base and self-speculative sampling (adaptive when `adaptive`)."""
    options = dict(draft_options or {})
    methods = [Method("base")]
    methods += [
        Method(f"essg th={t:g}", "essg", float(t), False, max_step_draft, draft_options=options) for t in thresholds
    ]
    if adaptive:
        methods.append(Method("essg adaptive", "essg", start_threshold, True, max_step_draft, draft_options=options))
    if sampling:
        methods.append(Method("base sample", do_sample=True, samples=samples, baseline="base sample"))
        name = "sss adaptive" if adaptive else f"sss th={start_threshold:g}"
        methods.append(Method(name, "sss", start_threshold, adaptive, max_step_draft, True, samples, "base sample", options))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate method names {names}: are two thresholds equal?")
    return methods


def ablation_methods(start_threshold: float = 0.6, max_step_draft: int = 12, low_bit: str = "int4") -> list[Method]:
    """ssd's additions, each alone on top of the paper's adaptive `essg`, then all of them: the default method.

    `essg + <low_bit>`: the paper's skip set on low-bit copies of the weights; `essg + lookups`: prompt lookup
    beside the self-draft (`ngram_size=3`); `essg + gate`: a step drafts only while drafting measurably pays;
    `essg + trimmed head`: the draft scores 16,384 frequent ids and the prompt's; `hybrid`: the default method
    (the model's default draft, lookups, the gate, the trimmed head, and llama.cpp's GGUF draft where installed).
    """
    def essg(name: str, **changes) -> Method:
        return Method(f"essg + {name}", "essg", start_threshold, True, max_step_draft, **changes)

    return [
        essg(low_bit, draft_precision=low_bit),
        essg("lookups", draft_options={"ngram_size": 3}),
        essg("gate", draft_options={"gate": True}),
        essg("trimmed head", draft_options={"draft_vocab_size": TRIMMED_DRAFT_VOCAB}),
        Method("hybrid", "hybrid", start_threshold, True, max_step_draft, draft_options={"gguf_draft": "auto"}),
    ]


# --- setting up ----------------------------------------------------------------------


def check_draft_key(key: str | None, model_name: str | None = None) -> None:
    """What `apply_draft` refuses, checked before a model loads: a model without its own entry must name one,
    and an entry named for another model must exist (the model's own may be missing: it then falls back)."""
    if key is None and model_name is not None and model_name not in NAMED_CHECKPOINTS:
        raise ValueError(f"name the skip_layers.json entry for {model_name} (e.g. 'llama-2-13b'); "
                         f"the default entry is the embedded model's")
    if key is not None and key != model_key(model_name):
        load_draft(key)


def apply_draft(model, key: str | None, model_name: str | None = None) -> str:
    """Set the draft from skip_layers.json. `key=None` means the model's own entry: the embedded model's
    falls back to the hand-picked set, and a named model's (`ssd.loading.checkpoints.NAMED_CHECKPOINTS`) to
    skipping nothing (its draft is then its low-bit copy and lookups), until a search has written it;
    another model must name its entry. Returns what was used."""
    check_draft_key(key, model_name)
    own = model_key(model_name)
    key = key or own
    try:
        draft = apply_skip_layers(model, key)
        return f"skip set {key!r} from skip_layers.json: {draft}"
    except KeyError:
        if key != own:
            raise
    fallback = hand_made_set(model.num_layers) if key == EMBEDDED_KEY else ([], [])
    model.set_skip_layers(*fallback)
    return (f"no {key!r} entry in skip_layers.json yet: drafting with attention {fallback[0]} and mlp "
            f"{fallback[1]} skipped" + (" (hand-picked)" if key == EMBEDDED_KEY else "") + _precision(model))


def _precision(model) -> str:
    return f", draft precision {model.get_draft_precision() or 'full'}"


def model_label(name_or_path: str | None) -> str:
    return "SmolLM2-135M-Instruct (embedded)" if name_or_path is None else Path(str(name_or_path)).name


# --- generating ---------------------------------------------------------------------


def results_file(folder: str | Path | None, notebook: str, parameters: dict, model, examples: list[Example],
                 methods: list[Method], settings: GenerationSettings) -> ResultsFile:
    """The result file of this setup (`ssd.tools.results`), new or to resume: named by the notebook, task,
    model and number of examples, and a hash of the notebook's `parameters` (dtype, device and compile as
    loaded), the methods, the settings, the examples and the model's draft. `folder` None: `results/`."""
    digest = hashlib.sha256(json.dumps([[e.task, e.id, e.prompt] for e in examples]).encode()).hexdigest()
    setup = dict(parameters=as_loaded(parameters, model), methods=[asdict(m) for m in methods],
                 settings=asdict(settings), examples=dict(n=len(examples), sha256=digest), draft=draft_setup(model))
    tasks = "-".join(dict.fromkeys(e.task for e in examples))
    prefix = f"{notebook}_{tasks}_{model_key(model.name_or_path)}_n{len(examples)}"
    return ResultsFile.open(folder, prefix, setup, provenance(model))


def generate_all(model, tokenizer, examples: list[Example], methods: list[Method], settings: GenerationSettings,
                 progress: bool = True, results: ResultsFile | None = None) -> list[dict]:
    """Every method on every example, on the timing harness (`ssd.tools.timing`: methods alternate per example,
    one untimed warm-up each); one record per generation, with the example's id and the decoded completion.

    `results` (`results_file`): each example's records are appended to it once all its methods have run; the
    examples it already holds are read back, not generated again, and an adaptive threshold resumes from its
    last record, so an interrupted run continues as if it had not stopped. The records returned are then the
    file's.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    if not methods:
        raise ValueError("no methods to evaluate")
    names = {m.name for m in methods}
    missing = sorted({m.baseline for m in methods} - names)
    if missing:
        raise ValueError(f"baseline method(s) {missing} are not among the methods {sorted(names)}")
    done = _done(results, examples, methods)
    # An adaptive threshold carries over from one example to the next (the warm-up keeps its own).
    thresholds = {(m.name, task): m.th_stop_draft for m in methods for task in ({e.task for e in examples} | {WARM_UP_TASK})}
    adaptive = {m.name for m in methods if m.adaptive}
    for r in (r for records in done.values() for r in records if r["method"] in adaptive):
        if r["th_stop_draft"] is not None:
            thresholds[r["method"], r["task"]] = r["th_stop_draft"]
    samples = {m.name: 0 for m in methods}  # calls so far, for each call's seed (settings.seed + sample)
    eos = tokenizer.eos_token_id if settings.early_stop else []

    def harness_method(method: Method):
        def run(input_ids, task):
            sample = 0
            if task != WARM_UP_TASK:
                sample = samples[method.name] % method.samples
                samples[method.name] += 1
            out = _generate(model, input_ids, method, thresholds[method.name, task], settings, sample, eos)
            if method.adaptive and out.th_stop_draft is not None:  # None: no self-draft ran (llama.cpp's drafted)
                thresholds[method.name, task] = out.th_stop_draft
            return Run.of(out, drafts=method.drafts, th_stop_draft=out.th_stop_draft if method.drafts else None,
                          matchness=out.matchness if method.drafts else None,
                          completion=tokenizer.decode(out.tokens, skip_special_tokens=True))
        return run

    todo = [i for i, e in enumerate(examples) if e.id not in done]

    def finished(records: list[dict]) -> None:
        for r in records:
            r["prompt"] = todo[r["prompt"]]  # its index among all the examples
            r["example_id"] = examples[r["prompt"]].id
        if results is not None:
            results.append(records[0]["example_id"], records)

    records = []
    if todo:
        prompts = [(examples[i].task, encode_inputs(examples[i].prompt, tokenizer, model.device)) for i in todo]
        warm_up = encode_inputs(WARM_UP, tokenizer, model.device)
        greedy = [m.name for m in methods if not m.do_sample]
        records = run_side_by_side(prompts, {m.name: harness_method(m) for m in methods}, warm_up,
                                   reference="base" if "base" in names else None, compared=greedy,
                                   repeats={m.name: m.samples for m in methods}, progress=progress, on_prompt=finished)
    return records if results is None else results.read().records


def _done(results: ResultsFile | None, examples: list[Example], methods: list[Method]) -> dict[str, list[dict]]:
    """The examples `results` already holds, by id, each checked to have every method's every sample."""
    if results is None:
        return {}
    ids = [e.id for e in examples]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"example ids repeat, so a result file cannot tell them apart: {repeated}")
    done = results.read().examples
    expected = sorted((m.name, s) for m in methods for s in range(m.samples))
    for example_id, records in done.items():
        if example_id not in ids or sorted((r["method"], r["sample"]) for r in records) != expected:
            raise ValueError(f"{results.path}: example {example_id!r} is not one of this run's, or lacks some of its "
                             f"methods' samples: the file belongs to another setup")
    return done


def _generate(model, input_ids, method: Method, threshold: float, settings: GenerationSettings, sample: int, eos):
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=method.do_sample, eos_token_id=eos,
                              return_dict_in_generate=True)
    if method.do_sample:
        config.update(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    draft = {}
    if method.drafts:
        # The paper's thresholds are the self-draft's: llama.cpp's GGUF draft (the `llama` extra) stays out
        # unless `draft_options` name one.
        draft = dict({"gguf_draft": None}, **method.draft_options, max_step_draft=method.max_step_draft,
                     th_stop_draft=threshold, auto_th_stop_draft=method.adaptive)
        if method.draft_precision is not None:
            draft["draft"] = paper_draft(model).replace(precision=method.draft_precision)
    generator = torch.Generator(device=model.device).manual_seed(settings.seed + sample)
    return generate(model, input_ids, config, method=method.generate_fn, generator=generator, **draft)
