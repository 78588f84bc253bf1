"""A validation-tuned blend of the model with its best baseline (opt-in: ``train.blend = true``).

When a heuristic beats the model on validation, the run can serve a mixture instead of the model:

    score(j) = (1 - alpha) * z(model scores)(j) + alpha * z(baseline scores)(j)

with ``z`` standardising each row over the catalogue (mean 0, unit variance over finite scores;
-inf, i.e. padding or removed items, stays -inf), so the two scales are comparable. ``alpha`` and
the baseline are chosen on the validation examples the model was selected on, from a grid that
includes 0 (the model alone) and 1 (the baseline alone): the served answer is never worse than
either on validation. The baseline's fitted state is saved with the run (``blend.safetensors``) so
the recommender and the service score the same blend. Only baselines with a saveable state blend:
popularity, Markov, recent items and weighted recent items (``BLENDABLE``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from shopformer.data.batches import Batch
from shopformer.evaluation.baselines import Markov, Popularity, RecentItems, WeightedRecentItems

ScoreFn = Callable[[Batch], torch.Tensor]
# finer near 0: a light touch of a baseline is where blends win. Markov's standardised counts are large
# (a transition row holds a handful of items among thousands), so 0.02 already adds ~2 model stds to
# an item that followed the last one; Beauty's validation is flat from 0.02 to 0.05 (stop 39)
ALPHAS = (0.0, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
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

    def combine(self, model_scores: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.alpha == 0.0:
            return model_scores
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
        alpha = torch.tensor(self.alpha, dtype=torch.float64)  # float32 would read 0.3 back as 0.30000001
        return {"alpha": alpha, **{f"baseline.{k}": v for k, v in own().items()}}

    @classmethod
    def from_state(cls, name: str, tensors: dict[str, torch.Tensor], counts: str = "training") -> Blend:
        if name not in BLENDABLE:
            raise ValueError(f"unknown blend baseline {name!r}; blendable: {', '.join(BLENDABLE)}")
        if counts not in ("training", "validation"):
            raise ValueError(f"unknown blend counts {counts!r}; expected 'training' or 'validation'")
        own = {k.removeprefix("baseline."): v for k, v in tensors.items() if k.startswith("baseline.")}
        # rounded: runs saved before stop 38 hold alpha in float32
        return cls(name, BLENDABLE[name].from_state(own), round(float(tensors["alpha"]), 6),
                   "validation" if counts == "validation" else "training")

    def row(self, model: str) -> str:
        """The table row of this blend served with ``model``."""
        return f"{model} + {self.baseline_name} (blend, alpha {self.alpha:g})"

    def summary(self) -> dict[str, str | float]:
        """What was chosen, as the manifest and the metrics say it."""
        return {"baseline": self.baseline_name, "alpha": self.alpha}

    def notice(self, model: str, chosen_on: str = "validation") -> str:
        """The run's warning line saying that it serves this blend, not the model alone."""
        counts = ", its counts then refit through validation" if self.counts == "validation" else ""
        return (f"served answers blend {model} with '{self.baseline_name}' (alpha {self.alpha:g}, chosen on "
                f"{chosen_on}{counts}): the blend rows of the tables are what the run serves")

    @property
    def row_name(self) -> str | None:
        """The test row of the blend's own baseline when its counts differ from the other baselines'
        (which keep the model's training events): the served blend is read against it."""
        return f"{self.baseline_name} (through validation)" if self.counts == "validation" else None


def served_row(model: str, blend: Blend | None) -> str:
    """The table row of what a run serves: its blend's row, or the model's own."""
    return model if blend is None else blend.row(model)


def choose_blend(
    baselines: dict[str, ScoreFn], validate: Callable[[Blend | None], float]
) -> tuple[Blend | None, dict[str, dict[float, float]]]:
    """The (baseline, alpha) with the best validation score (``validate`` maps a blend, or None for
    the model alone, to it; higher is better) among the blendable baselines and ``ALPHAS``; ties keep
    the smaller alpha, so the model alone wins unless a blend is strictly better. Returns None when
    alpha 0 is best, and the grid."""
    grid: dict[str, dict[float, float]] = {}
    best: tuple[float, float, str] | None = None
    model_score = validate(None)
    for name, fn in baselines.items():
        if name not in BLENDABLE:
            continue
        grid[name] = {0.0: model_score}
        for alpha in ALPHAS[1:]:
            grid[name][alpha] = validate(Blend(name, fn, alpha))
        for alpha, score in grid[name].items():
            if best is None or (score, -alpha) > (best[0], -best[1]):
                best = (score, alpha, name)
    if best is None or best[1] == 0.0:
        return None, grid
    return Blend(best[2], baselines[best[2]], best[1]), grid
