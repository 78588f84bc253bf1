"""Multi-task heads on one shared (causal) encoder.

``MultiTaskHeads`` attaches to any causal ``SequenceModel`` (``model.heads``) and adds:

* **Behaviour-conditioned item scoring** (``score``): the hidden state is shifted by a learned
  query for the behaviour asked about, ``h_b = h + adapt(LN(h) + q_b)``; behaviour 0 means "any
  behaviour" and leaves ``h`` untouched. Trained at every position on the behaviour of the event
  that actually came next (each behaviour type weighted equally, so a rare purchase counts as
  much as the ubiquitous view), so ``recommend(behaviour=...)`` works for every type in the data.
* **A history pointer** added to every item score: users re-buy what they viewed or carted, and
  a shop catalogue is too large and sparse for item embeddings alone to learn that. Each event of
  the window proposes its item with a logit from (query, encoder state of that event, distance,
  elapsed time); repeats of an item are pooled by log-sum-exp. The encoder state carries the
  event's behaviour only when ``model.use_behaviour`` is on, so the ablation switch also removes
  "this was carted" from the pointer. At inference the catalogue term ``h_b . e_j`` is weighted by
  ``catalogue_weight`` (a buffer, 1 by default, selected on validation by the training entry point):
  on sparse shop logs the item table overfits long before the pointer does, and its dot products
  for never-seen contexts then push random items above the history.
* **Next action**: a classifier over the behaviour vocabulary (class 0 = padding, never predicted).
* **Purchase intent**: one logit for "the target behaviour occurs within the next N events",
  trained only where the N next events are known (censored positions are masked, never negatives).
  Platt scaling fitted on validation lives in the ``intent_calibration`` buffer, so it is saved
  with the weights.

Both classifiers read ``summary``: the encoder state, the causal running mean of the window's
states, and the share of each behaviour type among the last N events and the whole window (plus
the log event count). Softmax attention averages, so "how many carts lately" is hard to read off a
single state; the explicit shares supply it. They are zero when ``use_behaviour`` is off, so the
ablation sees no behaviour anywhere.

Which parts are trained, and their weights, come from ``TaskConfig``. The target behaviour id
is a buffer (``target``): it is resolved from the data at configuration time and saved with the
model, so a run never needs to re-derive it.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from shopformer.config import LossConfig, ModelConfig, TaskConfig
from shopformer.data.batches import Batch
from shopformer.data.corpus import DataSpec
from shopformer.data.schema import PAD
from shopformer.models.base import LossOutput
from shopformer.models.layers import N_EXACT, approx_times, log_bucket
from shopformer.models.losses import NegativeSampler

# Loss parts trained for each task kind; "item" (next item, any behaviour) is always on because
# it is what teaches the shared encoder and the item table.
PARTS: dict[str, tuple[str, ...]] = {
    "next-item": ("item",),
    "next-purchase": ("item", "target"),
    "next-action": ("item", "action"),
    "intent": ("item", "intent"),
    "multi": ("item", "target", "action", "intent"),
}
# Kinds whose default recommendation is "items the user will <target behaviour>".
TARGET_FIRST = ("next-purchase", "multi")

Behaviour = int | torch.Tensor | None
RECENCY_PRIOR = 4.0  # initial pointer logit of the most recent event (see HistoryPointer)


class HistoryPointer(nn.Module):
    """Copy logits for the items already in the window, pooled per item."""

    def __init__(self, dim: int, max_len: int, time_buckets: int | None) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.n_dist = N_EXACT + math.ceil(math.log2(max_len)) + 1
        self.dist = nn.Embedding(self.n_dist, 1)
        self.time = nn.Embedding(time_buckets, 1) if time_buckets else None
        self.scale = dim**-0.5
        with torch.no_grad():
            # Start from the strongest shop heuristic, "recently seen items": at initialisation the
            # catalogue's dot products are ~N(0, 1) (max ~4 over 50k items), so a history item
            # starts above them, the more so the more recent it is. Training adjusts both terms;
            # with few steps (small logs, CPU budgets) a zero start would never get there.
            self.dist.weight.copy_((RECENCY_PRIOR - 0.25 * torch.arange(self.n_dist, dtype=torch.float)).unsqueeze(1))
            if self.time is not None:
                self.time.weight.zero_()

    def forward(
        self, queries: torch.Tensor, qpos: torch.Tensor, keys: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, Q, D) made at window positions qpos (Q,); keys (B, L, D) encoder states.

        Returns (bonus, rep), each (B, Q, L): ``bonus[b, q, s]`` is the pooled copy logit of item
        ``items[b, s]`` for query q, and ``rep`` marks one representative occurrence per item (its
        latest one visible to the query), so each item receives its bonus exactly once.
        """
        items = batch.items
        real = items != PAD  # (B, L)
        length = items.shape[1]
        pos = torch.arange(length, device=items.device)
        dist = qpos[:, None] - pos[None, :]  # (Q, L)
        visible = (dist >= 0)[None] & real[:, None, :]  # (B, Q, L): causal, real keys only
        logits = (self.q(queries) @ self.k(keys).transpose(1, 2)) * self.scale  # (B, Q, L)
        logits = logits + self.dist(log_bucket(dist.clamp(min=0), N_EXACT, self.n_dist)).squeeze(-1)
        if self.time is not None:
            t = approx_times(batch.gaps)  # (B, L) seconds since the window start (approximate)
            dt = (t[:, qpos][:, :, None] - t[:, None, :]).clamp(min=0)  # (B, Q, L) elapsed since s
            tb = torch.log2(1.0 + dt).long().clamp(max=self.time.num_embeddings - 1)
            logits = logits + self.time(tb).squeeze(-1)
        same = (items[:, :, None] == items[:, None, :]) & real[:, :, None] & real[:, None, :]  # (B, L, L)
        # log-sum-exp over the visible occurrences of the same item, via one batched matmul
        masked = logits.masked_fill(~visible, float("-inf"))
        top = masked.amax(-1, keepdim=True).clamp(min=-1e4).detach()  # (B, Q, 1), finite
        weights = torch.exp(masked - top)  # 0 where not visible
        pooled = torch.log((weights @ same.to(weights.dtype)).clamp_min(1e-30)) + top  # (B, Q, L)
        # the next occurrence of the same item after s (L if none): s represents its item for
        # every query that cannot see that next occurrence yet
        later = same & (pos[None, None, :] > pos[None, :, None])
        nxt = torch.where(later, pos[None, None, :], torch.full_like(later, length, dtype=torch.long)).amin(-1)
        rep = visible & (nxt[:, None, :] > qpos[None, :, None])
        return torch.where(rep, pooled, torch.zeros_like(pooled)), rep


class MultiTaskHeads(nn.Module):
    # buffers (registered in __init__; saved with the weights)
    target: torch.Tensor  # () dense id of the target behaviour
    catalogue_weight: torch.Tensor  # () weight of full-catalogue scores at inference
    action_offsets: torch.Tensor  # (n_behaviours + 1,) decision offsets of the next-action head
    intent_calibration: torch.Tensor  # (2,) Platt scaling (a, b) of the intent logit

    def __init__(self, task: TaskConfig, model_cfg: ModelConfig, spec: DataSpec) -> None:
        super().__init__()
        dim = model_cfg.dim
        self.kind = task.kind
        self.parts = PARTS[task.kind]
        self.weights = {"item": task.w_item, "target": task.w_target, "action": task.w_action,
                        "intent": task.w_intent}
        self.horizon = task.intent_horizon
        self.n_behaviours = spec.n_behaviours
        # Resolved from the data by the caller (set_target); saved with the weights.
        self.register_buffer("target", torch.tensor(1, dtype=torch.long))
        self.register_buffer("catalogue_weight", torch.tensor(1.0))  # inference only; see module docstring
        self.query = nn.Embedding(spec.n_behaviours + 1, dim, padding_idx=PAD)  # row 0: any behaviour
        nn.init.normal_(self.query.weight, std=dim**-0.5)
        with torch.no_grad():
            self.query.weight[PAD].zero_()
        self.adapt = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        out = self.adapt[-1]
        assert isinstance(out, nn.Linear)
        nn.init.zeros_(out.weight)  # start as the unconditioned state
        nn.init.zeros_(out.bias)
        use_time = model_cfg.use_time_gap and spec.has_time
        self.pointer = HistoryPointer(dim, model_cfg.max_len, model_cfg.time_buckets if use_time else None)
        self.use_behaviour = model_cfg.use_behaviour
        n_summary = 2 * dim + 2 * spec.n_behaviours + 1
        if "action" in self.parts:
            self.action = _mlp(n_summary, spec.n_behaviours + 1, dim)
            # additive logit offsets of the class *decision* (tuned on validation for macro-F1);
            # probabilities are reported without them
            self.register_buffer("action_offsets", torch.zeros(spec.n_behaviours + 1))
        if "intent" in self.parts:
            self.intent = _mlp(n_summary, 1, dim)
            self.register_buffer("intent_calibration", torch.tensor([1.0, 0.0]))  # Platt (a, b)

    # ---- configuration --------------------------------------------------------------------

    def set_target(self, behaviour: int) -> None:
        if not 1 <= behaviour <= self.n_behaviours:
            raise ValueError(f"target behaviour id {behaviour} outside 1..{self.n_behaviours}")
        self.target.fill_(behaviour)

    @property
    def default_behaviour(self) -> int:
        """What ``score_all(batch)`` ranks for: the target behaviour for next-purchase/multi, else any."""
        return int(self.target) if self.kind in TARGET_FIRST else PAD

    def require(self, part: str) -> None:
        if part not in self.parts:
            raise ValueError(f"this model was trained for task.kind={self.kind!r}, which has no {part!r} head")

    # ---- building blocks ------------------------------------------------------------------

    def condition(self, hidden: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
        """hidden (..., D), behaviour (...) ids (0 = any) -> behaviour-conditioned states (..., D)."""
        shifted = hidden + self.adapt(hidden + self.query(behaviour))
        return torch.where((behaviour == PAD).unsqueeze(-1), hidden, shifted)

    def _behaviour_tensor(self, behaviour: Behaviour, n: int, device: torch.device) -> torch.Tensor:
        if behaviour is None:
            behaviour = self.default_behaviour
        b = torch.as_tensor(behaviour, dtype=torch.long, device=device)
        b = b.expand(n) if b.dim() == 0 else b  # one behaviour for the batch, or one per row
        if ((b < 0) | (b > self.n_behaviours)).any():
            raise ValueError(f"behaviour ids must be in 0..{self.n_behaviours} (0 = any)")
        return b

    # ---- inference ------------------------------------------------------------------------

    def score(self, hidden: torch.Tensor, batch: Batch, emb: torch.Tensor, behaviour: Behaviour) -> torch.Tensor:
        """(B, L, D) encoder states -> (B, V) scores of the event after the window."""
        b, length, _ = hidden.shape
        beh = self._behaviour_tensor(behaviour, b, hidden.device)
        q = self.condition(hidden[:, -1], beh)  # (B, D)
        qpos = torch.tensor([length - 1], device=hidden.device)
        bonus, rep = self.pointer(q.unsqueeze(1), qpos, hidden, batch)  # (B, 1, L)
        scores = self.catalogue_weight * (q @ emb.T)
        idx = torch.where(rep[:, 0], batch.items, torch.zeros_like(batch.items))
        return scores.scatter_add(1, idx, bonus[:, 0])

    def summary(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(B, L, D) states -> (B, L, F) causal features of the classifier heads (see module doc)."""
        real = (batch.items != PAD).unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        count = real.cumsum(1)  # events <= t
        mean = (hidden * real).cumsum(1) / count.clamp(min=1)
        n_b = self.n_behaviours
        onehot = F.one_hot(batch.behaviours, n_b + 1)[..., 1:].to(hidden.dtype) * real  # (B, L, nb)
        if not self.use_behaviour:  # the ablation: no behaviour information at all
            onehot = torch.zeros_like(onehot)
        csum = F.pad(onehot.cumsum(1), (0, 0, 1, 0))  # (B, L + 1, nb): csum[:, i] = counts over < i
        length = hidden.shape[1]
        idx = torch.arange(length, device=hidden.device)
        lo = (idx + 1 - self.horizon).clamp(min=0)
        recent = csum[:, idx + 1] - csum[:, lo]  # last `horizon` events <= t
        n_recent = (count - F.pad(count, (0, 0, 1, 0))[:, lo]).clamp(min=1)
        return torch.cat([hidden, mean, recent / n_recent, csum[:, 1:] / count.clamp(min=1),
                          torch.log1p(count)], dim=-1)

    def action_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(..., F) summary features -> (..., n_behaviours + 1) logits; column 0 (padding) is -inf."""
        self.require("action")
        logits = self.action(features)
        return logits.index_fill(-1, torch.tensor([PAD], device=logits.device), float("-inf"))

    def intent_logit(self, features: torch.Tensor) -> torch.Tensor:
        """(..., F) summary features -> (...) uncalibrated logit of "target within the next N events"."""
        self.require("intent")
        return self.intent(features).squeeze(-1)

    def calibrated(self, logit: torch.Tensor) -> torch.Tensor:
        """Platt-scaled probability of an intent logit (scaling fitted on validation)."""
        a, c = self.intent_calibration
        return torch.sigmoid(a * logit + c)

    # ---- training -------------------------------------------------------------------------

    def intent_labels(self, batch: Batch) -> torch.Tensor:
        """(B, L) float: 1/0 = target within the next N events, -1 = unknown (masked).

        A loader may attach exact labels computed on the whole training prefix as
        ``batch.intent_labels``; otherwise they come from the window itself, and a position whose
        N next events are not all inside the window is unknown.
        """
        given = getattr(batch, "intent_labels", None)
        if given is not None:
            return given.float()
        if batch.target_behaviours is None:
            raise ValueError("intent labels need target_behaviours")
        return window_intent_labels(batch.target_behaviours, int(self.target), self.horizon)

    def loss(
        self,
        hidden: torch.Tensor,
        batch: Batch,
        emb: torch.Tensor,
        loss_cfg: LossConfig,
        sampler: NegativeSampler | None = None,
    ) -> LossOutput:
        """Weighted sum of the active parts, each computed at real positions only."""
        if batch.targets is None:
            raise ValueError("a training batch needs targets")
        real = batch.targets != PAD  # (B, L)
        rows, cols = real.nonzero(as_tuple=True)  # M real positions
        targets = batch.targets[rows, cols]
        length = hidden.shape[1]
        qpos = torch.arange(length, device=hidden.device)
        negatives = None
        if loss_cfg.kind == "sampled":
            if sampler is None:
                raise ValueError("loss.kind='sampled' needs a NegativeSampler")
            negatives = sampler.sample(loss_cfg.negatives).to(hidden.device)  # shared by all parts
        log_q = sampler.log_q.to(hidden.device) if sampler is not None and loss_cfg.logq_correction else None
        parts: dict[str, torch.Tensor] = {}

        def item_ce(queries: torch.Tensor) -> torch.Tensor:
            bonus, rep = self.pointer(queries, qpos, hidden, batch)  # (B, L, L)
            return candidate_ce(queries[rows, cols], targets, emb, batch.items[rows], bonus[rows, cols],
                                rep[rows, cols], loss_cfg, negatives, log_q)

        parts["item"] = item_ce(hidden).mean()
        if "target" in self.parts:
            tb = batch.target_behaviours
            if tb is None:
                raise ValueError("the behaviour-conditioned head needs target_behaviours")
            cond = self.condition(hidden, tb)
            ce = item_ce(cond)
            parts["target"] = _balanced_mean(ce, tb[rows, cols], self.n_behaviours)
        summary = self.summary(hidden, batch) if {"action", "intent"} & set(self.parts) else None
        if "action" in self.parts:
            tb = batch.target_behaviours
            assert summary is not None and tb is not None  # a training batch has targets
            logits = self.action_logits(summary[rows, cols])  # (M, C)
            parts["action"] = F.cross_entropy(logits[:, 1:], tb[rows, cols] - 1)
        if "intent" in self.parts:
            labels = self.intent_labels(batch)
            known = (labels >= 0) & real
            assert summary is not None
            logit = self.intent_logit(summary[known])
            parts["intent"] = (
                F.binary_cross_entropy_with_logits(logit, labels[known]) if known.any() else hidden.sum() * 0.0
            )
        total = sum(self.weights[k] * v for k, v in parts.items())
        return LossOutput(total, {k: float(v.detach()) for k, v in parts.items()})  # type: ignore[arg-type]


def _mlp(n_in: int, out: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, width), nn.GELU(), nn.Linear(width, out))


def _balanced_mean(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Mean of per-group means over the groups present (each behaviour type counts the same)."""
    counts = torch.bincount(groups, minlength=n_groups + 1).to(values.dtype)
    sums = torch.zeros(n_groups + 1, dtype=values.dtype, device=values.device).index_add(0, groups, values)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


def window_intent_labels(target_behaviours: torch.Tensor, target: int, horizon: int) -> torch.Tensor:
    """(B, L) next-event behaviours -> (B, L) labels: 1 if ``target`` is among the ``horizon`` next
    events (columns t .. t + horizon - 1), 0 if not, -1 where those events are not all known."""
    hit = (target_behaviours == target).float()
    b, length = hit.shape
    csum = F.pad(hit.cumsum(-1), (1, 0))  # (B, L + 1): csum[:, i] = hits in columns < i
    end = torch.arange(length, device=hit.device) + horizon  # exclusive end of each horizon
    inside = end <= length
    end_c = end.clamp(max=length)
    count = csum[:, end_c] - csum[:, :length]
    known = inside[None, :] & (target_behaviours[:, (end_c - 1)] != PAD) & (target_behaviours != PAD)
    labels = (count > 0).float()
    return torch.where(known, labels, torch.full_like(labels, -1.0))


def candidate_ce(
    queries: torch.Tensor,
    targets: torch.Tensor,
    emb: torch.Tensor,
    items: torch.Tensor,
    bonus: torch.Tensor,
    rep: torch.Tensor,
    loss_cfg: LossConfig,
    negatives: torch.Tensor | None,
    log_q: torch.Tensor | None,
) -> torch.Tensor:
    """(M,) cross-entropy of each target among the catalogue (or target + shared negatives).

    queries (M, D); targets (M,); items/bonus/rep (M, L): each query's window items, pointer
    bonus and representative mask. Logits are ``q . e_j`` plus the pointer bonus of item j.
    """
    own = torch.where(rep, bonus, torch.zeros_like(bonus))
    if negatives is None:
        logits = (queries @ emb.T).scatter_add(1, torch.where(rep, items, torch.zeros_like(items)), own)
        # padding is never a class; dropping its column keeps label smoothing finite
        return F.cross_entropy(logits[:, 1:], targets - 1, reduction="none",
                               label_smoothing=loss_cfg.label_smoothing)
    pos = (queries * emb[targets]).sum(-1) + (own * (items == targets[:, None])).sum(-1)  # (M,)
    uniq, inverse = torch.unique(negatives, return_inverse=True)  # sorted
    col = torch.searchsorted(uniq, items).clamp(max=len(uniq) - 1)  # (M, L)
    hit = rep & (uniq[col] == items)
    neg_bonus = torch.zeros(len(queries), len(uniq), dtype=bonus.dtype, device=bonus.device)
    neg_bonus = neg_bonus.scatter_add(1, col, torch.where(hit, bonus, torch.zeros_like(bonus)))
    neg = queries @ emb[negatives].T + neg_bonus[:, inverse]  # (M, N)
    if log_q is not None:
        pos = pos - log_q[targets]
        neg = neg - log_q[negatives][None, :]
    neg = neg.masked_fill(negatives[None, :] == targets[:, None], float("-inf"))  # accidental hits
    logits = torch.cat([pos[:, None], neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=logits.device),
                           reduction="none")
