"""A validation-tuned blend of the model with its best baselines (``train.blend``).

When heuristics beat the model on validation, or know what it misses, the run can serve a mixture:

    score(j) = (1 - sum_b w_b) * z(model scores)(j) + sum_b w_b * z(baseline b's scores)(j)

over one or two baselines b, with ``z`` standardising each row over the catalogue (mean 0, unit
variance over finite scores; -inf, i.e. padding or removed items, stays -inf), so the scales are
comparable. The weights are chosen on the validation examples the model was selected on, in two
rounds (``choose_blend``): each blendable baseline alone over ``ALPHAS`` (0: the model alone, 1: the
baseline alone), then the winner, at its weight or the neighbouring ones, beside each other blendable
baseline weighted from ``PAIR_ALPHAS``. A pair is served only when it beats the best single blend on
validation, a single blend only when it beats the model alone: the served answer is never worse than
either on validation. The baselines' fitted state is saved with the run (``blend.safetensors``) so
the recommender and the service score the same blend. Only baselines with a saveable state blend
(``BLENDABLE``).

Every blend of the grid is ranked from one pass over the validation examples: the model and each
baseline score a batch once (``blend_scores``), and each weighting is a sum of the standardised rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from shopformer.data.batches import Batch
from shopformer.evaluation.baselines import (
    CategoryPopularity,
    CoOccurrence,
    Markov,
    Popularity,
    RecentItems,
    WeightedRecentItems,
)
from shopformer.evaluation.ranking import ManyScoreFn, keep_window

ScoreFn = Callable[[Batch], torch.Tensor]
# finer near 0: a light touch of a baseline is where blends win. Markov's standardised counts are large
# (a transition row holds a handful of items among thousands), so 0.02 already adds ~2 model stds to
# an item that followed the last one; Beauty's validation is flat from 0.02 to 0.05 (stop 39)
ALPHAS = (0.0, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
# a pair's second weight (its first: the single blend's alpha and its neighbours in ALPHAS). Kept light:
# Markov + co-occurrence beside a SASRec chose 0.02-0.08 for co-occurrence on Beauty (stop 39), and on
# Diginetica a co-occurrence weight of 0.2 beside weighted recent items won validation by 0.7% and lost
# 6% on test (stop 40)
PAIR_ALPHAS = (0.02, 0.03, 0.05, 0.08, 0.1)
CHUNK = 25  # most blends ranked per pass with top-k lists (each holds its lists until the end of the pass)
CHUNK_BYTES = 1 << 30  # and at most this much of those lists at once (``blend_chunk``)
BLENDABLE: dict[str, type[Popularity] | type[Markov] | type[RecentItems] | type[WeightedRecentItems]
                | type[CoOccurrence] | type[CategoryPopularity]] = {
    "popularity": Popularity, "markov": Markov, "recent items": RecentItems,
    "weighted recent items": WeightedRecentItems, "co-occurrence": CoOccurrence,
    "category popularity": CategoryPopularity}
Counts = Literal["training", "validation"]


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """(B, V) -> each row minus its mean over finite entries, divided by their std (-inf kept)."""
    # one new (B, V) tensor, worked on in place: a blend search standardises the model's and every
    # baseline's scores for each batch, and at 75k items the fresh tensors cost more than the arithmetic
    bad = torch.isfinite(scores).logical_not_()
    x = torch.nan_to_num(scores.float(), nan=0.0, posinf=0.0, neginf=0.0)  # non-finite entries count as 0
    n = (scores.shape[1] - bad.sum(1, keepdim=True)).clamp(min=1)
    mean = x.sum(1, keepdim=True) / n
    d = x.sub_(mean).masked_fill_(bad, 0.0)
    var = (d * d).sum(1, keepdim=True) / n
    return d.div_(var.sqrt().clamp(min=1e-12)).masked_fill_(bad, float("-inf"))


@dataclass
class Blend:
    """The served mixture of a model's scores with one or two baselines' (``weights``, in the order
    the baselines were chosen; the model keeps the rest of the weight)."""

    baselines: dict[str, ScoreFn]
    weights: dict[str, float]
    # the events the baselines' counts come from: the model's training events, or training + validation
    # events once the blend is chosen (train.blend_counts); saved with the run, so a reloaded run says which
    counts: Counts = "training"

    @classmethod
    def of(cls, name: str, baseline: ScoreFn, alpha: float, counts: Counts = "training") -> Blend:
        """The blend with one baseline."""
        return cls({name: baseline}, {name: alpha}, counts)

    @property
    def baseline_name(self) -> str:
        return " + ".join(self.weights)

    @property
    def alpha(self) -> float:
        """The baselines' total weight."""
        return round(sum(self.weights.values()), 6)

    @property
    def weights_text(self) -> str:
        """'0.03' for one baseline, '0.03 / 0.05' for two (the grid's key and the rows' wording)."""
        return " / ".join(f"{w:g}" for w in self.weights.values())

    def __post_init__(self) -> None:
        if list(self.baselines) != list(self.weights):  # mix and state pair them by position
            raise ValueError(f"blend baselines {list(self.baselines)} and weights {list(self.weights)} differ")

    def mix(self, model_scores: torch.Tensor, z_model: torch.Tensor, z_baselines: list[torch.Tensor]) -> torch.Tensor:
        """The blend from the model's raw and standardised scores and each baseline's standardised ones."""
        if self.alpha == 0.0:
            return model_scores
        if len(z_baselines) == 1 and self.alpha == 1.0:  # the baseline alone
            return z_baselines[0]
        terms = [w * z for w, z in zip(self.weights.values(), z_baselines, strict=True)]
        rest = 1.0 - sum(self.weights.values())
        out = rest * z_model if rest > 1e-9 else terms.pop(0)  # no model term at weight 0: 0 * -inf is nan
        for term in terms:
            out = out + term
        return out

    def combine(self, model_scores: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.alpha == 0.0:
            return model_scores
        z_baselines = [standardise(fn(batch).float()) for fn in self.baselines.values()]
        return self.mix(model_scores, standardise(model_scores.float()), z_baselines)

    def scorer(self, model_fn: ScoreFn) -> ScoreFn:
        def score(batch: Batch) -> torch.Tensor:
            return self.combine(model_fn(batch), batch)

        keep_window(score, model_fn)  # the model's history window (evaluation.ranking.scorer_window)
        return score

    def with_baselines(self, fitted: dict[str, ScoreFn], counts: Counts) -> Blend:
        """The same weights over the same baselines fitted on other events."""
        return Blend({name: fitted[name] for name in self.weights}, dict(self.weights), counts)

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save: each baseline's weight and fitted state, prefixed by its position."""
        out: dict[str, torch.Tensor] = {}
        for i, (name, fn) in enumerate(self.baselines.items()):
            own = getattr(fn, "state", None)
            if own is None:
                raise ValueError(f"baseline {name!r} cannot be saved; blendable: {', '.join(BLENDABLE)}")
            # float32 would read 0.3 back as 0.30000001
            out[f"weight.{i}"] = torch.tensor(self.weights[name], dtype=torch.float64)
            out.update({f"baseline.{i}.{k}": v for k, v in own().items()})
        return out

    @classmethod
    def from_state(cls, names: list[str], tensors: dict[str, torch.Tensor], counts: str = "training") -> Blend:
        """The saved blend of ``names`` (the manifest's, in order); runs saved before stop 40 hold one
        baseline as ``alpha`` and ``baseline.<key>``."""
        unknown = [n for n in names if n not in BLENDABLE]
        if unknown or not names:
            raise ValueError(f"unknown blend baseline {unknown or names!r}; blendable: {', '.join(BLENDABLE)}")
        if counts not in ("training", "validation"):
            raise ValueError(f"unknown blend counts {counts!r}; expected 'training' or 'validation'")
        if "alpha" in tensors:
            tensors = {"weight.0": tensors["alpha"],
                       **{f"baseline.0.{k.removeprefix('baseline.')}": v for k, v in tensors.items()
                          if k.startswith("baseline.")}}
        baselines: dict[str, ScoreFn] = {}
        weights: dict[str, float] = {}
        for i, name in enumerate(names):
            own = {k.removeprefix(f"baseline.{i}."): v for k, v in tensors.items() if k.startswith(f"baseline.{i}.")}
            baselines[name] = BLENDABLE[name].from_state(own)
            weights[name] = round(float(tensors[f"weight.{i}"]), 6)  # rounded: runs before stop 38 hold float32
        return cls(baselines, weights, "validation" if counts == "validation" else "training")

    def row(self, model: str) -> str:
        """The table row of this blend served with ``model``."""
        weights = f"alpha {self.weights_text}" if len(self.weights) == 1 else f"weights {self.weights_text}"
        return f"{model} + {self.baseline_name} (blend, {weights})"

    def summary(self) -> dict[str, str | float | dict[str, float]]:
        """What was chosen, as the manifest and the metrics say it."""
        return {"baseline": self.baseline_name, "alpha": self.alpha, "weights": dict(self.weights)}

    def notice(self, model: str, chosen_on: str = "validation") -> str:
        """The run's warning line saying that it serves this blend, not the model alone."""
        counts = ", its counts then refit through validation" if self.counts == "validation" else ""
        weights = f"alpha {self.weights_text}" if len(self.weights) == 1 else f"weights {self.weights_text}"
        return (f"served answers blend {model} with '{self.baseline_name}' ({weights}, chosen on "
                f"{chosen_on}{counts}): the blend rows of the tables are what the run serves")

    def own_rows(self) -> dict[str, ScoreFn]:
        """The test rows of the blend's own baselines when their counts differ from the other baselines'
        (which keep the model's training events): the served blend is read against them."""
        if self.counts != "validation":
            return {}
        return {f"{name} (through validation)": fn for name, fn in self.baselines.items()}


def served_row(model: str, blend: Blend | None) -> str:
    """The table row of what a run serves: its blend's row, or the model's own."""
    return model if blend is None else blend.row(model)


def blend_scores(model_fn: ScoreFn, blends: list[Blend | None]) -> ManyScoreFn:
    """A batch's scores under each of ``blends`` in turn (None: the model alone), the model and each
    baseline scored and standardised once per batch (``evaluation.ranking.evaluate_each``)."""
    def score(batch: Batch) -> Iterator[torch.Tensor]:
        raw = model_fn(batch)
        z_model = standardise(raw.float())
        z: dict[int, torch.Tensor] = {}  # by fitted baseline (two fits of one name may differ)
        for blend in blends:
            if blend is None:
                yield raw
                continue
            for fn in blend.baselines.values():
                if id(fn) not in z:
                    z[id(fn)] = standardise(fn(batch).float())
            yield blend.mix(raw, z_model, [z[id(fn)] for fn in blend.baselines.values()])

    keep_window(score, model_fn)
    return score


Grid = dict[str, dict[float | str, float]]


def blend_chunk(n_examples: int, kmax: int, lists: bool = True) -> int:
    """How many blends one pass over ``n_examples`` may rank: ``CHUNK``, fewer where their ranks and
    top-``kmax`` lists would pass ``CHUNK_BYTES`` (``evaluation.ranking.evaluate_each`` holds them all).
    Without lists (``lists=False``, a rank metric chooses) only the ranks are held, so a round of the grid
    is one pass: each pass scores the model and every baseline again, minutes on a large catalogue."""
    if not lists:
        return max(1, CHUNK_BYTES // max(1, n_examples * 8))
    return max(1, min(CHUNK, CHUNK_BYTES // max(1, n_examples * (kmax + 2) * 8)))


def choose_blend(
    baselines: dict[str, ScoreFn], validate: Callable[[list[Blend | None]], list[float]], chunk: int = CHUNK,
    report: Callable[[str], None] | None = None,
) -> tuple[Blend | None, Grid]:
    """The blend with the best validation score among the blendable baselines (``validate`` maps
    blends, None for the model alone, to their scores, higher is better; it is asked ``chunk`` at a
    time, e.g. ``blend_scores`` over one pass, ``blend_chunk`` sizing it). First each baseline alone
    over ``ALPHAS``; ties keep the smaller alpha, so the model alone wins unless a blend is strictly
    better (None then). Then the winner, at its alpha or a neighbouring one in ``ALPHAS``, beside each
    other blendable baseline weighted from ``PAIR_ALPHAS``, kept only when strictly better than the
    single blend. Returns the blend and the grid: {baseline(s): {weight(s): score}}, 0.0 being the
    model alone. (Scoring each cell by the mean of its grid neighbours, against flat surfaces, did no
    better on test: ``bench/blend_choice.py``, stop 41.)"""
    names = [n for n in baselines if n in BLENDABLE]
    singles = [Blend.of(n, baselines[n], a) for n in names for a in ALPHAS[1:]]
    model_score, *scores = _validate(validate, [None, *singles], chunk, report, "one baseline")
    grid: Grid = {n: {0.0: model_score} for n in names}
    best: tuple[float, float, Blend | None] = (model_score, 0.0, None)
    for blend, score in zip(singles, scores, strict=True):
        grid[blend.baseline_name][blend.alpha] = score
        best = max(best, (score, -blend.alpha, blend), key=lambda t: t[:2])
    first = best[2]
    if first is None:
        return None, grid
    name = first.baseline_name
    at = ALPHAS.index(first.alpha)
    pairs = [Blend({name: baselines[name], other: baselines[other]}, {name: a, other: b})
             for other in names if other != name for a in ALPHAS[max(at - 1, 1) : at + 2] for b in PAIR_ALPHAS
             if a + b <= 1.0]
    pair: tuple[float, float, Blend | None] = (float("-inf"), 0.0, None)
    for blend, score in zip(pairs, _validate(validate, pairs, chunk, report, "two baselines"), strict=True):
        grid.setdefault(blend.baseline_name, {0.0: model_score})[blend.weights_text] = score
        pair = max(pair, (score, -blend.alpha, blend), key=lambda t: t[:2])
    return (pair[2] if pair[0] > best[0] else first), grid


def _validate(validate: Callable[[list[Blend | None]], list[float]], blends: list, chunk: int,
              report: Callable[[str], None] | None = None, stage: str = "") -> list[float]:
    """Scores of ``blends``, ``chunk`` per call of ``validate``; ``report`` hears of each call first
    (a pass over every validation example: minutes on a large catalogue, so the CLI says where it is)."""
    scores: list[float] = []
    for i in range(0, len(blends), chunk):
        if report is not None:
            report(f"choosing the served blend ({stage}): blends {i + 1}-{min(i + chunk, len(blends))} "
                   f"of {len(blends)}")
        scores += validate(blends[i : i + chunk])
    return scores
