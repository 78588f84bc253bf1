"""Differentially private training: DP-SGD (Abadi et al. 2016) for any model and objective of ``fit``.

``make_private(objective, params, loader, dp)`` wraps a training objective. For each batch the
wrapper computes every example's gradient separately (an example = one row of the batch, one
training window; with ``train.sliding_window = false`` one user), clips each to L2 norm
``dp.max_grad_norm``, sums them, adds Gaussian noise of std ``noise_multiplier * max_grad_norm``
per coordinate and divides by the batch size. It returns a loss whose ``backward()`` yields exactly
that private gradient (a surrogate: the value is the batch's mean loss, the gradient the private
one), so ``fit``'s optimiser, schedule and global clipping (post-processing: still private) run
unchanged. Per-example gradients are taken one example at a time: exact for every layer and for
weights shared between input and output (SASRec's item table), at the cost of B small backward
passes per batch of B.

The privacy spent is tracked by Opacus' RDP accountant (``opacus.accountants.RDPAccountant``): one
step per batch at sample rate q = batch size / training windows. The accountant assumes Poisson
sampling, the loader shuffles into fixed-size batches: the usual approximation (Opacus' own
default DataLoader does the same unless ``poisson_sampling``). ``report()`` gives epsilon at
``dp.delta``; ``fit`` puts it into its result, and the pipelines into metrics.json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch

from shopformer.config import DPConfig
from shopformer.models.base import LossOutput

Objective = Callable[[Any], LossOutput]


def batch_size_of(batch: Any) -> int:
    """Rows of a batch (a dataclass of (B, ...) tensors, as every loader of ``fit`` yields)."""
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return int(v.shape[0])
    raise ValueError(f"cannot tell the batch size of a {type(batch).__name__}")


def example(batch: Any, i: int, n: int) -> Any:
    """Row ``i`` of a batch of ``n`` rows, as a batch of one (tensors of other shapes are shared)."""
    return dataclasses.replace(batch, **{
        f.name: v[i : i + 1] for f in dataclasses.fields(batch)
        if isinstance(v := getattr(batch, f.name), torch.Tensor) and v.dim() > 0 and v.shape[0] == n})


class PrivateObjective:
    """The DP-SGD objective (see the module text) and its privacy accountant."""

    def __init__(self, objective: Objective, params: list[torch.nn.Parameter], dp: DPConfig, n_examples: int,
                 batch_size: int, seed: int) -> None:
        try:
            from opacus.accountants import RDPAccountant
        except ImportError:
            raise ValueError("train.dp needs Opacus: pip install 'shopformer[privacy]'") from None
        if n_examples <= 0:
            raise ValueError("differentially private training needs at least one training window")
        self.objective, self.params, self.dp, self.n_examples = objective, params, dp, n_examples
        self.batch_size = batch_size
        self.accountant = RDPAccountant()
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.steps = 0

    def __call__(self, batch: Any) -> LossOutput:
        n = batch_size_of(batch)
        total = [torch.zeros_like(p) for p in self.params]
        losses = []
        clip = self.dp.max_grad_norm
        for i in range(n):
            out = self.objective(example(batch, i, n))
            grads = torch.autograd.grad(out.total, self.params, allow_unused=True)
            grads_ = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params, strict=True)]
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads_))  # type: ignore[arg-type]
            scale = min(1.0, clip / (float(norm) + 1e-12))
            for acc, g in zip(total, grads_, strict=True):
                acc.add_(g, alpha=scale)
            losses.append(out.total.detach())
        surrogate = torch.zeros((), device=total[0].device if total else "cpu")
        for p, acc in zip(self.params, total, strict=True):
            noise = torch.randn(acc.shape, generator=self.generator, dtype=acc.dtype).to(acc.device)
            private = (acc + noise * (self.dp.noise_multiplier * clip)) / n
            surrogate = surrogate + (p * private).sum()
        self.accountant.step(noise_multiplier=self.dp.noise_multiplier, sample_rate=min(1.0, n / self.n_examples))
        self.steps += 1
        mean_loss = torch.stack(losses).mean()
        # value: the batch's mean loss; gradient: the private one
        return LossOutput(total=surrogate - surrogate.detach() + mean_loss, parts={"dp_loss": float(mean_loss)})

    def epsilon(self) -> float:
        """Epsilon spent so far at ``dp.delta`` (inf without noise)."""
        if self.dp.noise_multiplier == 0:
            return float("inf")
        return float(self.accountant.get_epsilon(self.dp.delta)) if self.steps else 0.0

    def report(self) -> dict[str, float | int | str]:
        return {"epsilon": self.epsilon(), "delta": self.dp.delta, "noise_multiplier": self.dp.noise_multiplier,
                "max_grad_norm": self.dp.max_grad_norm, "steps": self.steps, "training_windows": self.n_examples,
                "sample_rate": round(min(1.0, self.batch_size / self.n_examples), 6),
                "accountant": "rdp (opacus)", "unit": "training window"}


def make_private(objective: Objective, params: Iterable[torch.nn.Parameter], loader: Any, dp: DPConfig,
                 batch_size: int, seed: int) -> PrivateObjective:
    """The DP-SGD objective for ``fit``. Training windows: the loader's ``ends`` (TrainLoader: one
    per window) when it has them, else counted over one pass of the loader (never estimated: a
    count too high would understate epsilon)."""
    ends = getattr(loader, "ends", None)
    n = len(ends) if ends is not None else sum(batch_size_of(b) for b in loader)
    return PrivateObjective(objective, [p for p in params if p.requires_grad], dp, n, batch_size, seed)


def privacy_note(report: dict) -> str:
    """The report's line on a private run: the (epsilon, delta) spent and what it covers."""
    eps = report["epsilon"]
    spent = ("no privacy (noise_multiplier 0)" if eps == float("inf")
             else f"epsilon = {eps:.3g} at delta = {report['delta']:g}")
    return (f"differentially private training (DP-SGD): {spent} per training window, {report['steps']} steps at sample "
            f"rate {report['sample_rate']:g}, noise {report['noise_multiplier']:g}, clip {report['max_grad_norm']:g} "
            "(RDP accountant); the test rows are of this private model")
