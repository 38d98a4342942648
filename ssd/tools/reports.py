"""Tables and plots of the evaluation notebooks (their result files: `ssd.tools.results`).

Speedup is a method's tokens per second over its baseline's (greedy methods
against greedy `base`, sampled ones against sampled `base`).
"""

from __future__ import annotations

import statistics

from ssd.tools.evaluation import Method
from ssd.tools.timing import tabulate_speed

# --- tables -------------------------------------------------------------------------


def tabulate_evaluation(records: list[dict], methods: list[Method], model: str, metrics: dict) -> list[dict]:
    """One row per method: quality metrics, then the harness's statistics (`ssd.tools.timing.tabulate_speed`:
    tokens/s and ms per token, speedup over the method's baseline, pooled matchness, drafted and new tokens per
    verification).

    `metrics` maps a column name to a function of the method's records (for
    example mean ROUGE-2, or pass@k).
    """
    by_method = {m.name: [r for r in records if r["method"] == m.name] for m in methods}
    empty = [name for name, rows in by_method.items() if not rows]
    if empty:
        raise ValueError(f"no records for method(s) {empty}")
    timed = {row["method"]: row for row in tabulate_speed(records, {m.name: m.baseline for m in methods}) if row["task"] == "all"}
    table = []
    for m in methods:
        rows, stats = by_method[m.name], timed[m.name]
        table.append(dict(
            model=model, task=rows[0]["task"], method=m.name, n=len({r["example_id"] for r in rows}),
            **{name: fn(rows) for name, fn in metrics.items()},
            matchness=stats["matchness"],
            drafted_per_step=_drafted_per_step(rows) if m.drafts else None,
            tokens_per_verification=stats["tokens_per_verification"],
            tokens_per_s=stats["tokens_per_second"],
            ms_per_token=1000 / stats["tokens_per_second"],
            speedup=stats["speedup"],
        ))
    return table


def _drafted_per_step(records: list[dict]) -> float:
    """Drafted tokens per verification, as the paper's "tokens drafted per step" (a step that drafted none counts)."""
    verifications = sum(r["verifications"] or 0 for r in records)
    return sum(r["drafted"] or 0 for r in records) / verifications if verifications else 0.0


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
    greedy = {m.name for m in methods if m.drafts and not m.do_sample}
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
    greedy = [m.name for m in methods if m.drafts and not m.do_sample]
    if exact:
        assert not divergences, f"greedy self-speculative output differs from base: {divergences}"
        unequal = {name: scores[name] for name in greedy if scores[name] != scores["base"]}
        assert not unequal, f"{metric} of base is {scores['base']} but {unequal}"
        return f"identical: {len(greedy)} greedy drafting methods x {len({r['example_id'] for r in records})} examples, {metric} = {scores['base']}"
    per_record = {(r["method"], r["example_id"]): r for r in records}
    for r in records:
        if r["method"] in greedy and r["tokens"] == per_record[("base", r["example_id"])]["tokens"] and metric in r:
            assert r[metric] == per_record[("base", r["example_id"])][metric]
    return (f"{len(divergences)} of {len(greedy) * len({r['example_id'] for r in records})} greedy drafting generations left base's "
            f"path in reduced precision (near-ties; use float32 for token identity): {divergences}")


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
