"""A validation-tuned blend of the model with its best baseline (opt-in: ``train.blend = true``).

When a heuristic beats the model on validation, the run can serve a mixture instead of the model,
in one of two forms:

    "z":    score(j) = (1 - alpha) * z(model scores)(j) + alpha * z(baseline scores)(j)
    "prob": score(j) = log[(1 - alpha) * softmax(model scores)(j) + alpha * p_baseline(j)]

``z`` standardises each row over the catalogue (mean 0, unit variance over finite scores; -inf, i.e.
padding or removed items, stays -inf), so the two scales are comparable. "prob" is the
interpolation of language models, for baselines that are a distribution over the next item (Markov:
p(j | last item)): the model's own confidence sets how much the counts move it, and a last item with
no transitions leaves the model's ranking as it is. The form, ``alpha`` and the baseline are chosen
on the validation examples the model was selected on, from a grid that includes 0 (the model alone)
and 1 (the baseline alone, "z" form): the served answer is never worse than either on validation.
The baseline's fitted state is saved with the run (``blend.safetensors``, the form in the manifest)
so the recommender and the service score the same blend. Only baselines with a saveable state blend:
popularity, Markov, recent items and weighted recent items (``BLENDABLE``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from shopformer.data.batches import Batch
from shopformer.evaluation.baselines import Markov, Popularity, RecentItems, WeightedRecentItems

ScoreFn = Callable[[Batch], torch.Tensor]
Form = Literal["z", "prob"]
ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)  # finer near 0: a light touch of a baseline is where blends win
BLENDABLE: dict[str, type[Popularity] | type[Markov] | type[RecentItems] | type[WeightedRecentItems]] = {
    "popularity": Popularity, "markov": Markov, "recent items": RecentItems,
    "weighted recent items": WeightedRecentItems}


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """(B, V) -> each row minus its mean over finite entries, divided by their std (-inf kept)."""
    finite = torch.isfinite(scores)
    x = torch.where(finite, scores, torch.zeros_like(scores))
    n = finite.sum(1, keepdim=True).clamp(min=1)
    mean = x.sum(1, keepdim=True) / n
    var = (torch.where(finite, x - mean, torch.zeros_like(x)) ** 2).sum(1, keepdim=True) / n
    z = (x - mean) / var.sqrt().clamp(min=1e-12)
    return torch.where(finite, z, torch.full_like(z, float("-inf")))


@dataclass
class Blend:
    """The served mixture of a model's scores with one baseline's."""

    baseline_name: str
    baseline: ScoreFn
    alpha: float
    # the events the baseline's counts come from: the model's training events, or training + validation
    # events once the blend is chosen (train.blend_counts); saved with the run, so a reloaded run says which
    counts: Literal["training", "validation"] = "training"
    form: Form = "z"

    def combine(self, model_scores: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.alpha == 0.0:
            return model_scores
        if self.form == "prob":
            return mix_probabilities(model_scores, self.baseline.probabilities(batch), self.alpha)  # type: ignore[attr-defined]
        base = standardise(self.baseline(batch).float())
        if self.alpha == 1.0:
            return base
        return (1.0 - self.alpha) * standardise(model_scores.float()) + self.alpha * base

    def scorer(self, model_fn: ScoreFn) -> ScoreFn:
        def score(batch: Batch) -> torch.Tensor:
            return self.combine(model_fn(batch), batch)

        if hasattr(model_fn, "max_len"):  # keep the model's history window (evaluation.ranking.scorer_window)
            score.max_len = model_fn.max_len  # type: ignore[attr-defined]
        return score

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors to save: the baseline's fitted state, prefixed, and alpha."""
        own = getattr(self.baseline, "state", None)
        if own is None:
            raise ValueError(f"baseline {self.baseline_name!r} cannot be saved; blendable: {', '.join(BLENDABLE)}")
        alpha = torch.tensor(self.alpha, dtype=torch.float64)
        return {"alpha": alpha, **{f"baseline.{k}": v for k, v in own().items()}}

    @classmethod
    def from_state(cls, name: str, tensors: dict[str, torch.Tensor], counts: str = "training",
                   form: str = "z") -> Blend:
        if name not in BLENDABLE:
            raise ValueError(f"unknown blend baseline {name!r}; blendable: {', '.join(BLENDABLE)}")
        if counts not in ("training", "validation"):
            raise ValueError(f"unknown blend counts {counts!r}; expected 'training' or 'validation'")
        baseline = BLENDABLE[name].from_state(
            {k.removeprefix("baseline."): v for k, v in tensors.items() if k.startswith("baseline.")})
        if form not in ("z", "prob") or (form == "prob" and not hasattr(baseline, "probabilities")):
            raise ValueError(f"unknown blend form {form!r} for {name!r}; expected 'z'"
                             + (" or 'prob'" if hasattr(baseline, "probabilities") else ""))
        # rounded: runs saved before stop 38 hold alpha in float32 (0.3 read back as 0.30000001)
        return cls(name, baseline, round(float(tensors["alpha"]), 6),
                   "validation" if counts == "validation" else "training", "prob" if form == "prob" else "z")

    @property
    def weight(self) -> str:
        """"alpha 0.05", or "alpha 0.2, mixing probabilities" for the "prob" form."""
        return f"alpha {self.alpha:g}" + (", mixing probabilities" if self.form == "prob" else "")

    def row(self, model: str) -> str:
        """The table row of this blend served with ``model``."""
        return f"{model} + {self.baseline_name} (blend, {self.weight})"

    def summary(self) -> dict[str, str | float]:
        """What was chosen, as the manifest and the metrics say it."""
        return {"baseline": self.baseline_name, "alpha": self.alpha, "form": self.form}

    @property
    def row_name(self) -> str | None:
        """The test row of the blend's own baseline when its counts differ from the other baselines'
        (which keep the model's training events): the served blend is read against it."""
        return f"{self.baseline_name} (through validation)" if self.counts == "validation" else None


def served_row(model: str, blend: Blend | None) -> str:
    """The table row of what a run serves: its blend's row, or the model's own."""
    return model if blend is None else blend.row(model)


def mix_probabilities(model_scores: torch.Tensor, p_base: torch.Tensor, alpha: float) -> torch.Tensor:
    """(B, V) log[(1 - alpha) softmax(model_scores) + alpha p_base], in log space (no underflow);
    -inf model scores stay -inf, and where p_base is 0 the model's log-probability is only shifted."""
    logp = torch.log_softmax(model_scores.float(), 1)
    mixed = torch.logaddexp(logp + math.log1p(-alpha), p_base.float().log() + math.log(alpha))
    return torch.where(torch.isfinite(logp), mixed, logp)


def choose_blend(
    baselines: dict[str, ScoreFn], validate: Callable[[Blend | None], float]
) -> tuple[Blend | None, dict[str, dict[float, float]]]:
    """The (baseline, form, alpha) with the best validation score (``validate`` maps a blend, or None
    for the model alone, to it; higher is better) among the blendable baselines and ``ALPHAS``; ties
    keep the smaller alpha and the "z" form, so the model alone wins unless a blend is strictly
    better. Returns None when alpha 0 is best, and the grid ("<baseline>, mixing probabilities" for
    the "prob" form, which stops short of alpha 1: the baseline alone is the "z" form's)."""
    grid: dict[str, dict[float, float]] = {}
    best: tuple[float, float, Blend] | None = None
    model_score = validate(None)
    for name, fn in baselines.items():
        if name not in BLENDABLE:
            continue
        forms: list[Form] = ["z", "prob"] if hasattr(fn, "probabilities") else ["z"]
        for form in forms:
            key = name if form == "z" else f"{name}, mixing probabilities"
            grid[key] = {0.0: model_score}
            for alpha in ALPHAS[1:] if form == "z" else ALPHAS[1:-1]:
                blend = Blend(name, fn, alpha, form=form)
                grid[key][alpha] = score = validate(blend)
                if best is None or (score, -alpha) > (best[0], -best[1]):
                    best = (score, alpha, blend)
    if best is None or best[0] <= model_score:
        return None, grid
    return best[2], grid
