"""Bayesian search for the draft: the sub-layers it skips (Draft & Verify, section 3.2) and the
precision of the weights it runs (`ssd.fast.low_bit`).

One variable in [0, 1] per sub-layer, all L attention sub-layers then all L
MLP sub-layers; a sub-layer is skipped when its variable is above 0.5. When
more than one precision is searched, one more variable picks it: [0, 1] cut
into equal parts, one per precision. A Gaussian-process optimiser
(`bayes_opt`) maximises one of two objectives:

- `"predicted"` (default): the speedup over autoregressive decoding that the
  draft's acceptance predicts. One teacher-forced draft pass over text the
  full model generated gives, at every position at once, whether the draft's
  argmax equals the full model's token and how confident it was; replaying
  the draft/verify loop over those gives tokens per verification, and each
  sub-layer's measured cost, at the draft's precision, gives the cost of
  drafting. Deterministic, and it charges each kind of sub-layer what it
  measurably costs on the device.
- `"tokens_per_second"`: the paper's, wall-clock tokens per second of exact
  self-speculative decoding on the prompts. Noisy on a shared machine.

Every evaluation is appended to a JSONL log as it finishes, one log per identity
(everything a score depends on: model, prompts, lengths, dtype, device, objective,
precisions, draft settings); a search with the same identity resumes from all of
them, so an interruption loses nothing finished, and any change starts a new log.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ssd.core.clock import median_seconds, timed
from ssd.core.decoding import base_generate, speculative_decode
from ssd.core.draft import PRECISIONS, Draft
from ssd.core.files import append_jsonl, read_jsonl, write_text_atomic
from ssd.core.modeling_llama import LlamaForCausalLM
from ssd.core.self_draft import SelfDraftConfig
from ssd.core.skip_layers import save_skip_layers
from ssd.fast import DeviceProfile, DraftHead

logger = logging.getLogger(__name__)

OBJECTIVES = ("predicted", "tokens_per_second")


@dataclass(frozen=True)
class SearchConfig:
    """How candidate skip sets are evaluated and proposed."""

    max_new_tokens: int = 32  # text generated per prompt (paper: 32)
    # The layer-skipping draft on its own (no gate, no n-gram lookup): the search scores skip sets.
    draft: SelfDraftConfig = field(default_factory=lambda: SelfDraftConfig(auto_th_stop_draft=False))
    alpha: float = 1e-2  # GP noise term (paper: 1e-2)
    kappa: float = 2.576  # UCB exploration
    seed: int = 0
    # Draft precisions searched beside the skip set (None: the model's own weights); one: no variable for it.
    precisions: tuple[str | None, ...] = (None, *PRECISIONS)

    def __post_init__(self):
        if (not self.precisions or any(p not in (None, *PRECISIONS) for p in self.precisions)
                or len(set(self.precisions)) < len(self.precisions)):
            raise ValueError(f"precisions must be a non-empty tuple of distinct ones from {(None, *PRECISIONS)}, "
                             f"got {self.precisions}")


# --- variables <-> skip sets ---------------------------------------------------


PRECISION_VARIABLE = "precision"


def variable_names(num_layers: int, precisions: tuple = (None,)) -> list[str]:
    """`a00..` for attention, `m00..` for MLP, zero-padded so they sort in layer order; then `precision`
    when there is a choice of precisions."""
    width = len(str(num_layers - 1))
    names = [f"a{i:0{width}d}" for i in range(num_layers)] + [f"m{i:0{width}d}" for i in range(num_layers)]
    return names + ([PRECISION_VARIABLE] if len(precisions) > 1 else [])


def params_to_skip_layers(params: dict[str, float], num_layers: int) -> tuple[list[int], list[int]]:
    names = variable_names(num_layers)
    attention = [i for i in range(num_layers) if params[names[i]] > 0.5]
    mlp = [i for i in range(num_layers) if params[names[num_layers + i]] > 0.5]
    return attention, mlp


def params_to_precision(params: dict[str, float], precisions: tuple) -> str | None:
    if len(precisions) == 1:
        return precisions[0]
    return precisions[min(int(params[PRECISION_VARIABLE] * len(precisions)), len(precisions) - 1)]


def skip_layers_to_params(attention, mlp, num_layers: int, precision=None, precisions: tuple = (None,)) -> dict[str, float]:
    """The variables of a draft: 0 or 1 per sub-layer, and the middle of the precision's part."""
    names = variable_names(num_layers)
    skipped = {names[i] for i in attention} | {names[num_layers + i] for i in mlp}
    params = {name: 1.0 if name in skipped else 0.0 for name in names}
    if len(precisions) > 1:
        params[PRECISION_VARIABLE] = (precisions.index(precision) + 0.5) / len(precisions)
    return params


# --- costs and the predicted speedup ---------------------------------------------


@dataclass(frozen=True)
class StepCosts:
    """Forward costs relative to one full decoding step, measured on the model's device."""

    fixed: float  # a draft step's embeddings, final norm and (trimmed) LM head
    attention: float  # one attention sub-layer
    mlp: float  # one MLP sub-layer
    verify: tuple[float, ...]  # verify[k]: a full forward over k+1 tokens

    def draft(self, num_layers: int, attention: list[int], mlp: list[int]) -> float:
        return self.fixed + self.attention * (num_layers - len(attention)) + self.mlp * (num_layers - len(mlp))


@torch.no_grad()
def measure_step_costs(
    model: LlamaForCausalLM, max_tokens: int, head: DraftHead | None = None, precisions: tuple[str | None, ...] = (None,),
    context: int = 256, repeats: int = 8,
) -> dict[str | None, StepCosts]:
    """Time a full decoding step and full forwards over 1..max_tokens+1 tokens once, then, at each of
    `precisions`, draft steps (with `head`) with nothing, every attention and every MLP sub-layer skipped.

    Each pass runs as decoding runs it: full passes as the model (not a draft with nothing skipped), so
    with the attention decoding's verifications use, and no pass fills the cache, so the compiled
    blocks serve every pass when the model is compiled.
    """
    context = min(context, model.max_context - max_tokens - 2)
    cache = model.new_cache(context + max_tokens + 2)
    model(torch.zeros((1, context), dtype=torch.long, device=model.device), cache, 0)
    one = torch.zeros((1, 1), dtype=torch.long, device=model.device)
    all_layers = range(model.num_layers)

    def seconds(tokens: torch.Tensor, draft: Draft | None = None) -> float:
        scored_by = head if draft is not None else None
        return median_seconds(lambda: model(tokens, cache, context, draft=draft, head=scored_by), tokens.device, repeats)

    full = seconds(one)
    verify = tuple(seconds(torch.zeros((1, k + 1), dtype=torch.long, device=model.device)) / full for k in range(max_tokens + 1))
    costs = {}
    for precision in precisions:
        draft = seconds(one, Draft(precision=precision))
        no_attention = seconds(one, Draft(frozenset(all_layers), precision=precision))
        no_mlp = seconds(one, Draft(mlp=frozenset(all_layers), precision=precision))
        attention = max(draft - no_attention, 0.0) / model.num_layers / full
        mlp = max(draft - no_mlp, 0.0) / model.num_layers / full
        fixed = max(draft / full - model.num_layers * (attention + mlp), 0.0)
        costs[precision] = StepCosts(fixed, attention, mlp, verify)
    return costs


def predicted_speedup(matches: list[torch.Tensor], confidences: list[torch.Tensor], draft: SelfDraftConfig,
                      draft_cost: float, verify_cost: tuple[float, ...]) -> float:
    """Replay the draft/verify loop over teacher-forced predictions; tokens per unit of full-step time.

    `matches[s][t]`: the draft's argmax at position t of sequence s equals the
    full model's token; `confidences[s][t]`: the draft's top probability there.
    After a mismatch the draft goes on until its confidence drops under the
    threshold (teacher-forced confidences stand in for those of its own
    continuation); those tokens cost drafting time and are all rejected.
    """
    tokens, cost = 0, 0.0
    for match, confidence in zip(matches, confidences):
        match, confidence = match.tolist(), confidence.tolist()
        t = 0
        while t < len(match):
            drafted = accepted = 0
            matching = True
            while t + drafted < len(match) and drafted < draft.max_step_draft:
                position = t + drafted
                drafted += 1
                matching = matching and bool(match[position])
                accepted += matching
                if confidence[position] < draft.th_stop_draft:
                    break
            tokens += accepted + 1
            cost += drafted * draft_cost + verify_cost[drafted]
            t += accepted + 1
    return tokens / cost


# --- the search ----------------------------------------------------------------


def bayesian_optimizer(names: list[str], kappa: float, alpha: float, seed: int):
    """A `bayes_opt.BayesianOptimization` over [0, 1] for each name (`alpha`: the GP's noise term),
    suggesting by an upper confidence bound whose maximum is polished from one L-BFGS start instead of
    ten: with 2L = 60 variables, bayes_opt's default costs more per suggestion than an evaluation on a
    2-core CPU. bayes_opt is imported here, so that `import ssd` does not pay for it."""
    from bayes_opt import BayesianOptimization
    from bayes_opt.acquisition import UpperConfidenceBound

    class OneStartUpperConfidenceBound(UpperConfidenceBound):
        def suggest(self, gp, target_space, n_random=10_000, n_smart=10, fit_gp=True, random_state=None):
            return super().suggest(gp, target_space, n_random=n_random, n_smart=1, fit_gp=fit_gp,
                                   random_state=random_state)

    optimizer = BayesianOptimization(
        f=None,
        pbounds={name: (0.0, 1.0) for name in names},
        acquisition_function=OneStartUpperConfidenceBound(kappa=kappa),
        random_state=seed,
        verbose=0,
        allow_duplicate_points=True,
    )
    optimizer.set_gp_params(alpha=alpha)
    return optimizer


def runnable_precisions(precisions: tuple[str | None, ...], profile: DeviceProfile) -> tuple[str | None, ...]:
    """The searched precisions that have a kernel on the device (int4 has none on a GPU): the others are
    left out, in one log line, so that one setting searches wherever it runs."""
    runnable = tuple(p for p in precisions if profile.runs(p))
    if dropped := [p for p in precisions if p not in runnable]:
        logger.warning(f"draft precisions {dropped} have no kernel on {profile.type}: searching {list(runnable)}")
    if not runnable:
        raise ValueError(f"none of the draft precisions {list(precisions)} runs on {profile.type}; add None "
                         f"(the model's own weights)")
    return runnable


# --- what a score depends on: the log's identity ------------------------------------


def weights_fingerprint(model: LlamaForCausalLM) -> str:
    """A short hash of the model's config and of every weight's name, shape, dtype and an evenly strided
    sample of its values (at most 4096 a tensor): computed in milliseconds at any size, and it tells apart
    two checkpoints of the same depth."""
    digest = hashlib.sha256()
    config = {k: v for k, v in model.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "torch_dtype", "dtype")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, weight in model.named_parameters():
        flat = weight.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)][:4096].float().cpu()
        digest.update(f"{name}{tuple(weight.shape)}{weight.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def prompts_fingerprint(prompts: list[torch.Tensor]) -> str:
    """A short hash of the prompts' token ids: their text, its clipping (`max_words`) and the tokenizer."""
    digest = hashlib.sha256()
    for ids in prompts:
        digest.update(json.dumps(ids[0].tolist()).encode())
    return digest.hexdigest()[:16]


def identity_hash(identity: dict) -> str:
    """The short hash that names a search's log and its skip_layers.json entry."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]


def identity_differences(identity: dict, other: dict) -> list[str]:
    """What differs between two identities, readable: `max_new_tokens 12, not 32`; hashed ones by name."""
    differences = []
    for name in sorted(set(identity) | set(other)):
        mine, theirs = identity.get(name), other.get(name)
        if mine == theirs:
            continue
        if name in ("weights", "prompts"):
            differences.append(name)
        elif isinstance(mine, dict) and isinstance(theirs, dict):  # the draft settings, field by field
            differences += [f"{name}.{part}" for part in identity_differences(mine, theirs)]
        else:
            differences.append(f"{name} {mine!r}, not {theirs!r}")
    return differences


def logged_identity(path: Path) -> dict | None:
    """The identity on a search log's first line; None for any other file."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        return json.loads(first).get("identity")
    except (json.JSONDecodeError, AttributeError):
        return None


def safe_file_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "model"


class LayerSkippingSearching:
    """Finds the draft (skip set and precision) that maximises an objective over a few prompts.

    `prompts`: token id tensors `[1, T]` or strings. `model_key`: the model's name in skip_layers.json
    (`ssd.loading.keys.model_key`; None: its config's `model_type`), which names its log and its entry.

    `identity` holds everything a score depends on: the model (its key and `weights_fingerprint`), the
    prompts (`prompts_fingerprint`), `max_new_tokens`, the dtype, the device (and a CPU's threads), whether
    the model is compiled and its weights packed, the objective, the precisions searched and the draft
    settings the objective reads. `log_dir`: where each evaluation is appended to `<model key>-<hash of
    the identity>.jsonl` as it finishes, after a first line holding the identity; a search with the same
    identity resumes from that log, any other change starts a new log and leaves the old one as it was.
    `log_status` says which, in one line. None: evaluations are kept in memory only.
    """

    def __init__(
        self,
        model: LlamaForCausalLM,
        tokenizer,
        prompts,
        evaluate_config: SearchConfig = SearchConfig(),
        objective: str = "predicted",
        log_dir: str | Path | None = None,
        model_key: str | None = None,
    ):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if not prompts:
            raise ValueError("the search needs at least one prompt")
        self.model, self.config, self.objective = model, evaluate_config, objective
        self.num_layers = model.num_layers
        profile = DeviceProfile.of(model.device)
        self.precisions = runnable_precisions(evaluate_config.precisions, profile)
        self.names = variable_names(self.num_layers, self.precisions)
        self.prompts = [
            tokenizer(p, return_tensors="pt").input_ids.to(model.device) if isinstance(p, str) else p.to(model.device)
            for p in prompts
        ]
        self.model_key = model_key or model.config.model_type
        self.identity = json.loads(json.dumps({
            "model": self.model_key, "weights": weights_fingerprint(model), "layers": self.num_layers,
            "prompts": prompts_fingerprint(self.prompts), "n_prompts": len(self.prompts),
            "max_new_tokens": evaluate_config.max_new_tokens, "dtype": str(model.dtype).removeprefix("torch."),
            "device": f"{profile.type}: {profile.name}",
            "threads": torch.get_num_threads() if profile.type == "cpu" else None,
            "compiled": model.compiled, "packed": model.weights_packed,
            "objective": objective, "precisions": list(self.precisions), "draft": asdict(evaluate_config.draft),
        }))
        self.identity_hash = identity_hash(self.identity)
        config = evaluate_config
        self.optimizer = bayesian_optimizer(self.names, config.kappa, config.alpha, config.seed)
        self.history: list[dict] = []
        self.log_path, self.log_status, logged = self._open_log(log_dir)
        # Copies for every searched precision, before the draft heads are built: a head gathers its
        # low-bit rows from the model's copy of the LM head. The model's own precision is kept.
        for precision in self.precisions:
            model.prepare_draft(Draft(precision=precision))
        self.sequences, self.costs = [], {}  # for the predicted speedup: prepared on first use
        if objective == "predicted":
            self._prepare_predicted()
        for record in logged:
            params = dict(zip(self.names, record["params"]))
            self._register(record["attention"], record["mlp"], record["draft_precision"], record["score"], params,
                           record["kind"], log=False)

    @property
    def key(self) -> str:
        """The skip_layers.json entry this search writes by default: `<model key>/search/<hash>`."""
        return f"{self.model_key}/search/{self.identity_hash}"

    def _open_log(self, log_dir: str | Path | None) -> tuple[Path | None, str, list[dict]]:
        """The log of this identity, its one-line status and its evaluations (read before any costly
        preparation). A new log is compared with the closest other log in the folder, to say what differs."""
        if log_dir is None:
            return None, "no search log: evaluations are kept in memory only", []
        folder = Path(log_dir)
        path = folder / f"{safe_file_name(self.model_key)}-{self.identity_hash}.jsonl"
        if path.exists():
            header, *logged = read_jsonl(path, log=True) or [{}]
            if header.get("identity") != self.identity:
                raise ValueError(f"{path} was written by another search (its first line holds another identity "
                                 f"than {self.identity}); move it away")
            probes = sum(record["kind"] == "probe" for record in logged)
            return path, (f"search log {path}: resumed with {len(logged)} evaluations ({len(logged) - probes} "
                          f"proposed, {probes} probed)"), logged
        others = []
        for other in sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True):
            if isinstance(identity := logged_identity(other), dict):
                others.append((identity_differences(self.identity, identity), other))
        if not others:
            return path, f"search log {path}: new", []
        differences, closest = min(others, key=lambda pair: len(pair[0]))  # the newest among the closest
        return path, f"search log {path}: new; {closest} (kept as it is) differs in {'; '.join(differences)}", []

    # -- objectives --

    def _prepare_predicted(self) -> None:
        """Full-model text for each prompt (teacher-forcing targets) and the measured step costs at each precision."""
        self.sequences = []
        for input_ids in tqdm(self.prompts, desc="full-model text"):
            generated = base_generate(self.model, input_ids, self.config.max_new_tokens).tokens
            sequence = torch.cat([input_ids[0], torch.tensor(generated, device=input_ids.device)])[None]
            self.sequences.append((sequence, input_ids.shape[1], self.config.draft.draft_head(self.model, input_ids)))
        head = self.sequences[0][2]
        self.costs = measure_step_costs(self.model, self.config.draft.max_step_draft, head, self.precisions)

    @torch.no_grad()
    def acceptance(self, attention: list[int], mlp: list[int], precision: str | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per generated position: does the teacher-forced draft's argmax match, and its top probability."""
        matches, confidences = [], []
        draft = Draft.skipping(attention, mlp, precision)
        for sequence, prompt_length, head in self.sequences:
            cache = self.model.new_cache(sequence.shape[1])
            logits = self.model(sequence, cache, 0, draft=draft, head=head)[0, prompt_length - 1 : -1]
            top_prob, top_token = torch.softmax(logits, dim=-1).max(dim=-1)
            if head is not None:
                top_token = head.ids(top_token)
            matches.append((top_token == sequence[0, prompt_length:]).cpu())
            confidences.append(top_prob.cpu())
        return matches, confidences

    def predict(self, attention: list[int], mlp: list[int], precision: str | None = None) -> float:
        """The speedup over base decoding that the draft's teacher-forced acceptance and costs predict."""
        if precision not in self.precisions:
            raise ValueError(f"precision {precision!r} is not searched here; searched: {self.precisions}")
        if not self.costs:
            self._prepare_predicted()
        matches, confidences = self.acceptance(attention, mlp, precision)
        costs = self.costs[precision]
        draft_cost = costs.draft(self.num_layers, attention, mlp)
        return predicted_speedup(matches, confidences, self.config.draft, draft_cost, costs.verify)

    def evaluate(self, attention: list[int], mlp: list[int], precision: str | None = None) -> float:
        """The objective for one draft (higher is better)."""
        if self.objective == "predicted":
            return self.predict(attention, mlp, precision)
        tokens, seconds = 0, 0.0
        draft = self.model.prepare_draft(Draft.skipping(attention, mlp, precision))
        for input_ids in self.prompts:
            result, elapsed = timed(lambda: speculative_decode(
                self.model, input_ids, self.config.max_new_tokens, None, self.config.draft, None, None, draft=draft
            ), input_ids.device)
            seconds += elapsed
            tokens += len(result.tokens)
        return tokens / seconds

    # -- search --

    def _register(self, attention, mlp, precision, score: float, params: dict | None, kind: str,
                  log: bool = True) -> None:
        """Tell the optimiser the raw variables it proposed (0/1 for a probed set), and log it."""
        params = params or skip_layers_to_params(attention, mlp, self.num_layers, precision, self.precisions)
        self.optimizer.register(params=params, target=score)
        record = {"kind": kind, "attention": list(attention), "mlp": list(mlp), "draft_precision": precision,
                  "score": score, "params": [float(params[name]) for name in self.names]}
        self.history.append(record)
        if log and self.log_path is not None:
            if not self.log_path.exists():
                write_text_atomic(self.log_path, json.dumps({"identity": self.identity}) + "\n")
            append_jsonl(self.log_path, record)

    def probe(self, attention, mlp, precision: str | None = None) -> float:
        """Evaluate a known draft now and tell the optimiser (the paper seeds good sets this way). A draft
        probed before, in this search or the log it resumed, is not evaluated again: its score is returned."""
        attention, mlp = sorted(attention), sorted(mlp)
        for record in self.history:
            if record["kind"] == "probe" and (record["attention"], record["mlp"], record["draft_precision"]) == (
                    attention, mlp, precision):
                return record["score"]
        score = self.evaluate(attention, mlp, precision)  # bad input raises before anything is logged
        self._register(attention, mlp, precision, score, None, "probe")
        return score

    @property
    def proposals(self) -> int:
        """Evaluations the Gaussian process proposed (probes not counted), the log's included."""
        return sum(record["kind"] == "proposal" for record in self.history)

    def search_plan(self, n_iter: int) -> str:
        """What `search(n_iter)` will do, in one line."""
        if self.proposals >= n_iter:
            return (f"{self.proposals} proposals in the log already (n_iter={n_iter}): nothing to search; "
                    f"raise n_iter to continue")
        return f"{n_iter - self.proposals} proposals to make, {self.proposals} made before (n_iter={n_iter})"

    def search(self, n_iter: int) -> tuple[list[int], list[int]]:
        """Proposals of the Gaussian process until `n_iter` have been evaluated in all, the resumed log's
        included (probes not counted): a rerun continues an interrupted search, a larger `n_iter` continues
        a finished one, and the same `n_iter` does nothing. Returns the best skip set so far (its
        precision: `best_draft_precision`)."""
        progress = tqdm(range(max(0, n_iter - self.proposals)), desc="search")
        for _ in progress:
            params = self.optimizer.suggest()
            attention, mlp = params_to_skip_layers(params, self.num_layers)
            precision = params_to_precision(params, self.precisions)
            self._register(attention, mlp, precision, self.evaluate(attention, mlp, precision), params, "proposal")
            progress.set_postfix(best=f"{self.best_score:.4g}", skipped=len(attention) + len(mlp), precision=precision)
        return self.get_solution()

    @property
    def best_score(self) -> float:
        return max(record["score"] for record in self.history)

    def _best(self) -> dict:
        if not self.history:
            raise ValueError("nothing evaluated yet: call probe() or search() first")
        return max(self.history, key=lambda record: record["score"])

    def get_solution(self) -> tuple[list[int], list[int]]:
        best = self._best()
        return best["attention"], best["mlp"]

    @property
    def best_draft_precision(self) -> str | None:
        return self._best()["draft_precision"]

    def save(self, path: str | Path, key: str | None = None, overwrite: bool = False, **metadata) -> str:
        """Store the best draft in skip_layers.json at `path`, with the identity it was scored under, and
        return its key: `key`, or None for the search's own (`key`), which a continued search replaces.
        Any other existing entry (a shipped one such as the model's own key) is replaced only with
        `overwrite=True`; `metadata`: more JSON fields."""
        key = key or self.key
        identity = {name: value for name, value in self.identity.items() if name not in ("model", "weights", "prompts")}
        save_skip_layers(key, *self.get_solution(), path=path, overwrite=overwrite or key == self.key,
                         draft_precision=self.best_draft_precision, score=round(self.best_score, 4),
                         iterations=len(self.history), search=self.identity_hash,
                         log=self.log_path.name if self.log_path else None, **identity, **metadata)
        return key
