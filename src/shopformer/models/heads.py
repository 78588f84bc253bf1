"""Multi-task heads on one shared (causal) encoder.

``MultiTaskHeads`` attaches to any causal ``SequenceModel`` (``model.heads``) and adds:

* **Behaviour-conditioned item scoring** (``score``): the hidden state is shifted by a learned
  query for the behaviour asked about, ``q = h + adapt(LN(h) + q_b)``; behaviour 0 means "any
  behaviour" and leaves ``h`` untouched. Trained at every position on the behaviour of the event
  that actually came next (each behaviour type weighted equally, so a rare purchase counts as
  much as the ubiquitous view), so ``recommend(behaviour=...)`` works for every type in the data.
* **A learned repeat / explore mixture** (RepeatNet, Ren et al. 2019; ReCANet, Ariannezhad et al.
  2022: shoppers re-buy what they viewed or carted, and *when* they do is predictable). For the
  query ``q`` made after the window's events, with ``H`` the window's distinct items::

      P(j | h) = g * P_repeat(j) + (1 - g) * P_explore(j)
      P_repeat(j)  = exp(r_j) / sum_{i in H} exp(r_i)                     (j in H, else 0)
      P_explore(j) = exp(q . e_j) / sum_{i in catalogue, i not in H} exp(q . e_i)   (j not in H, else 0)
      g = sigmoid(gate(q, summary features, repeat features) + bias[behaviour asked])

  ``r_j`` is the history pointer's logit of item j (``HistoryPointer``): each event of the window
  proposes its item with a logit from (query, encoder state of that event, distance, elapsed
  time), repeats of an item pooled by log-sum-exp. The encoder state carries the event's behaviour
  only when ``model.use_behaviour`` is on, so the ablation switch also removes "this was carted"
  from the pointer. The gate is a small MLP, per step, per query and per behaviour asked (it reads
  the conditioned ``q``), of: ``q``; the ``summary`` features below (encoder state, running mean,
  behaviour shares, log event count); and three repeat features of the window so far (share of
  events that revisit an earlier item of the window, the same share over the last N events, log
  number of distinct items), the user's repeat propensity in the spirit of ReCANet; plus a learned
  offset per behaviour asked (zero for "any" and at the start), since a purchase repeats far more
  often than a view and the conditioned ``q`` alone learns that slowly.

  *Explore excludes the history* (RepeatNet's explore decoder): every item gets probability from
  exactly one component, so (1) ``g`` *is* P(the next item is one the user already touched in the
  window), a number a shop can read (``repeat_probability``); (2) the log-likelihood factorises,
  ``log g + log P_repeat(t)`` for a repeat target and ``log(1 - g) + log P_explore(t)`` for a new
  one, so the gate is trained as a plain repeat-vs-new classifier and the sampled-softmax estimate
  of the explore normaliser can never bias it; (3) the item table only learns discovery, never
  "the items of this history" (the pointer's job, and where the table overfitted on sparse shop
  logs). Measured on the demo slice (Taobao, 300 users, same seed and schedule), the variant whose
  explore softmax also covers the window's items is no better on validation: NDCG@10 0.1034 vs
  0.1056 (any behaviour, 3145 events) and 0.4268 vs 0.4276 (buy, 47 events), i.e. a tie, so the
  reasons above decide (``EXPLORE_EXCLUDES_HISTORY``). The gate starts at the training repeat rate
  of each behaviour (``set_repeat_prior``) and learns from there.

  Training (``mixture_nll``) minimises ``-log P(target)`` in log space: the explore softmax over
  the whole catalogue (``loss.kind='ce'``, with label smoothing over every real item) or over the
  target plus shared sampled negatives (``'sampled'``, logQ correction, accidental hits and
  negatives inside the window masked). ``score`` returns ``log P(j)`` for every item: finite for
  every real item, repeat and new items on one scale. Nothing switches the catalogue off.
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
model, so a run never needs to re-derive it. Runs saved before the gate existed (with a
``catalogue_weight`` buffer and no gate weights) still load: see ``_load_from_state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
# The explore softmax leaves out the window's items (see the module docstring). A design constant,
# not a tuning knob: both variants keep the whole catalogue in the ranking.
EXPLORE_EXCLUDES_HISTORY = True
N_REPEAT_FEATURES = 3  # repeat share (window, last N events), log distinct items
# Gate of a run saved before the gate existed (a ``catalogue_weight`` buffer, no gate weights):
# a constant g = sigmoid(3) ~ 0.95, i.e. the window's items first, as those runs' validated
# catalogue weight 0 ranked them, and the catalogue after them instead of a 0.0 filler.
LEGACY_REPEAT_LOGIT = 3.0
NEG_INF = float("-inf")


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
            # Start from the strongest shop heuristic, "the most recently seen item first": the
            # logits are softmaxed over the window's items (P_repeat), so only their differences
            # matter, and the closer an event the higher its start. Training adjusts them; with
            # few steps (small logs, CPU budgets) a flat start would never get there.
            self.dist.weight.copy_((RECENCY_PRIOR - 0.25 * torch.arange(self.n_dist, dtype=torch.float)).unsqueeze(1))
            if self.time is not None:
                self.time.weight.zero_()

    def forward(
        self, queries: torch.Tensor, qpos: torch.Tensor, keys: torch.Tensor, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, Q, D) made at window positions qpos (Q,); keys (B, L, D) encoder states.

        Returns (bonus, rep), each (B, Q, L): ``bonus[b, q, s]`` is the pooled copy logit of item
        ``items[b, s]`` for query q, and ``rep`` marks one representative occurrence per item (its
        latest one visible to the query), so each item receives its logit exactly once.
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
        self.n_items = spec.n_items
        self.exclude_history = EXPLORE_EXCLUDES_HISTORY
        # Resolved from the data by the caller (set_target); saved with the weights.
        self.register_buffer("target", torch.tensor(1, dtype=torch.long))
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
        # the repeat / explore gate: (q, summary, repeat features) -> logit of g, plus an offset per
        # behaviour asked (zero at the start and for "any"): how often a purchase repeats differs
        # from how often a view does, and the conditioned q alone learns that slowly (its adapter
        # starts at zero)
        self.gate = _mlp(dim + n_summary + N_REPEAT_FEATURES, 1, dim)
        gate_out = self.gate[-1]
        assert isinstance(gate_out, nn.Linear)
        nn.init.zeros_(gate_out.bias)  # g starts near 1/2
        self.gate_bias = nn.Embedding(spec.n_behaviours + 1, 1, padding_idx=PAD)
        nn.init.zeros_(self.gate_bias.weight)
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

    def set_repeat_prior(self, rates: Sequence[float]) -> None:
        """Start the gate at observed repeat rates (index 0: any behaviour, b: behaviour b; NaN: no
        data): its output bias at logit(rate of any), each behaviour's offset at the difference of
        logits. Training moves on from there."""
        if len(rates) != self.n_behaviours + 1:
            raise ValueError(f"need {self.n_behaviours + 1} repeat rates (any, then each behaviour), got {len(rates)}")
        logits = [_logit(r) for r in rates]
        base = 0.0 if math.isnan(logits[PAD]) else logits[PAD]
        gate_out = self.gate[-1]
        assert isinstance(gate_out, nn.Linear)
        with torch.no_grad():
            gate_out.bias.fill_(base)
            for b in range(1, self.n_behaviours + 1):
                self.gate_bias.weight[b, 0] = 0.0 if math.isnan(logits[b]) else logits[b] - base

    @property
    def default_behaviour(self) -> int:
        """What ``score_all(batch)`` ranks for: the target behaviour for next-purchase/multi, else any."""
        return int(self.target) if self.kind in TARGET_FIRST else PAD

    def require(self, part: str) -> None:
        if part not in self.parts:
            raise ValueError(f"this model was trained for task.kind={self.kind!r}, which has no {part!r} head")

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        """Load runs saved before the repeat gate: they carry a ``catalogue_weight`` buffer (an
        inference weight of the old additive scheme, meaningless now: dropped) and no gate weights
        (filled in as the constant gate ``sigmoid(LEGACY_REPEAT_LOGIT)``)."""
        legacy = state_dict.pop(prefix + "catalogue_weight", None)
        gate_prefix = prefix + "gate."
        if legacy is not None and not any(k.startswith(gate_prefix) for k in state_dict):
            for name, value in self.gate.state_dict().items():
                state_dict[gate_prefix + name] = value.detach().clone()
            last = f"{gate_prefix}{len(self.gate) - 1}."
            state_dict[last + "weight"] = torch.zeros_like(state_dict[last + "weight"])
            state_dict[last + "bias"] = torch.full_like(state_dict[last + "bias"], LEGACY_REPEAT_LOGIT)
            state_dict[prefix + "gate_bias.weight"] = torch.zeros_like(self.gate_bias.weight)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

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

    def gate_logit(self, queries: torch.Tensor, features: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
        """queries (..., D) conditioned on behaviour (...) ids (0 = any), ``gate_features`` (..., F)
        -> (...) logit of the repeat probability g."""
        return (self.gate(torch.cat([queries, features], dim=-1)) + self.gate_bias(behaviour)).squeeze(-1)

    def gate_features(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(B, L, D) states -> (B, L, F) causal history features of the gate: ``summary`` plus the
        repeat features (share of events revisiting an earlier item of the window, over the whole
        window and the last N events; log number of distinct items)."""
        return torch.cat([self.summary(hidden, batch), repeat_features(batch.items, self.horizon).to(hidden.dtype)],
                         dim=-1)

    # ---- inference ------------------------------------------------------------------------

    def _next_step(self, hidden: torch.Tensor, batch: Batch, behaviour: Behaviour
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The query after the window: (q (B, D), gate logit (B,), pointer logits, rep (B, L))."""
        b, length, _ = hidden.shape
        beh = self._behaviour_tensor(behaviour, b, hidden.device)
        q = self.condition(hidden[:, -1], beh)  # (B, D)
        qpos = torch.tensor([length - 1], device=hidden.device)
        bonus, rep = self.pointer(q.unsqueeze(1), qpos, hidden, batch)  # (B, 1, L)
        gate = self.gate_logit(q, self.gate_features(hidden, batch)[:, -1], beh)
        return q, gate, bonus[:, 0], rep[:, 0]

    def score(self, hidden: torch.Tensor, batch: Batch, emb: torch.Tensor, behaviour: Behaviour) -> torch.Tensor:
        """(B, L, D) encoder states -> (B, V) log P(item) of the event after the window (column 0
        -inf, every real item finite; see the module docstring)."""
        q, gate, bonus, rep = self._next_step(hidden, batch, behaviour)
        return mixture_log_probs(q @ emb.T, batch.items, bonus, rep, gate, self.exclude_history)

    def repeat_probability(self, hidden: torch.Tensor, batch: Batch, behaviour: Behaviour) -> torch.Tensor:
        """(B,) g: the probability that the next event (of ``behaviour``; None = the default) is
        about an item already in the window."""
        _, gate, _, rep = self._next_step(hidden, batch, behaviour)
        log_g, _ = gate_log_probs(gate, rep, self.n_items, self.exclude_history)
        return log_g.exp()

    def summary(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(B, L, D) states -> (B, L, F) causal features of the classifier heads (see module doc)."""
        real = (batch.items != PAD).unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        count = real.cumsum(1)  # events <= t
        mean = (hidden * real).cumsum(1) / count.clamp(min=1)
        n_b = self.n_behaviours
        onehot = F.one_hot(batch.behaviours, n_b + 1)[..., 1:].to(hidden.dtype) * real  # (B, L, nb)
        if not self.use_behaviour:  # the ablation: no behaviour information at all
            onehot = torch.zeros_like(onehot)
        recent, whole = _running_shares(onehot, count, self.horizon)
        return torch.cat([hidden, mean, recent, whole, torch.log1p(count)], dim=-1)

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
        negatives = log_q = None
        if loss_cfg.kind == "sampled":
            if sampler is None:
                raise ValueError("loss.kind='sampled' needs a NegativeSampler")
            negatives, log_q = sampler.draw(targets, loss_cfg.negatives, loss_cfg.in_batch)  # shared by all parts
            log_q = log_q.to(hidden.device) if loss_cfg.logq_correction else None
        features = self.gate_features(hidden, batch)  # (B, L, F): summary, then repeat features
        parts: dict[str, torch.Tensor] = {}

        def item_nll(queries: torch.Tensor, behaviour: torch.Tensor) -> torch.Tensor:
            bonus, rep = self.pointer(queries, qpos, hidden, batch)  # (B, L, L)
            q = queries[rows, cols]
            gate = self.gate_logit(q, features[rows, cols], behaviour)
            return mixture_nll(q, targets, emb, batch.items[rows], bonus[rows, cols], rep[rows, cols], gate,
                               loss_cfg, negatives, log_q, self.exclude_history)

        parts["item"] = item_nll(hidden, torch.zeros_like(targets)).mean()  # any behaviour
        if "target" in self.parts:
            tb = batch.target_behaviours
            if tb is None:
                raise ValueError("the behaviour-conditioned head needs target_behaviours")
            nll = item_nll(self.condition(hidden, tb), tb[rows, cols])
            parts["target"] = _balanced_mean(nll, tb[rows, cols], self.n_behaviours)
        n_summary = features.shape[-1] - N_REPEAT_FEATURES
        summary = features[..., :n_summary]
        if "action" in self.parts:
            tb = batch.target_behaviours
            assert tb is not None  # a training batch has targets
            logits = self.action_logits(summary[rows, cols])  # (M, C)
            parts["action"] = F.cross_entropy(logits[:, 1:], tb[rows, cols] - 1)
        if "intent" in self.parts:
            labels = self.intent_labels(batch)
            known = (labels >= 0) & real
            logit = self.intent_logit(summary[known])
            parts["intent"] = (
                F.binary_cross_entropy_with_logits(logit, labels[known]) if known.any() else hidden.sum() * 0.0
            )
        total = sum(self.weights[k] * v for k, v in parts.items())
        return LossOutput(total, {k: float(v.detach()) for k, v in parts.items()})  # type: ignore[arg-type]


def _logit(p: float, eps: float = 1e-3) -> float:
    """log(p / (1 - p)) of a probability clipped to [eps, 1 - eps]; NaN stays NaN."""
    if math.isnan(p):
        return math.nan
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


def _mlp(n_in: int, out: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, width), nn.GELU(), nn.Linear(width, out))


def _running_shares(x: torch.Tensor, count: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, L, C) per-event indicators (0 at padding), count (B, L, 1) real events <= t ->
    (share among the last ``horizon`` events <= t, share among all events <= t), each (B, L, C)."""
    length = x.shape[1]
    csum = F.pad(x.cumsum(1), (0, 0, 1, 0))  # (B, L + 1, C): csum[:, i] = counts over < i
    idx = torch.arange(length, device=x.device)
    lo = (idx + 1 - horizon).clamp(min=0)
    recent = csum[:, idx + 1] - csum[:, lo]  # last `horizon` events <= t
    n_recent = (count - F.pad(count, (0, 0, 1, 0))[:, lo]).clamp(min=1)
    return recent / n_recent, csum[:, 1:] / count.clamp(min=1)


def repeat_features(items: torch.Tensor, horizon: int) -> torch.Tensor:
    """(B, L) window items -> (B, L, 3) causal features: the share of events <= t that revisit an
    item seen earlier in the window (whole window; last ``horizon`` events) and log(1 + distinct
    items <= t). Independent of left padding."""
    real = items != PAD
    length = items.shape[1]
    pos = torch.arange(length, device=items.device)
    same = (items[:, :, None] == items[:, None, :]) & real[:, :, None] & real[:, None, :]  # (B, L, L)
    revisit = (same & (pos[None, None, :] < pos[None, :, None])).any(-1) & real  # (B, L)
    count = real.float().cumsum(1).unsqueeze(-1)  # (B, L, 1)
    recent, whole = _running_shares(revisit.float().unsqueeze(-1), count, horizon)
    distinct = (real & ~revisit).float().cumsum(1).unsqueeze(-1)
    return torch.cat([whole, recent, torch.log1p(distinct)], dim=-1)


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


# ---- the repeat / explore mixture -----------------------------------------------------------------


def _safe_logsumexp(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim of rows with at least one finite entry (``valid``, (...,)); 0 on
    the others, with a zero (never NaN) gradient."""
    return torch.where(valid, torch.logsumexp(x.masked_fill(~valid.unsqueeze(-1), 0.0), dim=-1),
                       torch.zeros_like(x[..., 0]))


def repeat_log_probs(bonus: torch.Tensor, rep: torch.Tensor) -> torch.Tensor:
    """Pointer logits (..., L) and representative mask (..., L) -> log P_repeat at each
    representative position (a softmax over the window's distinct items), -inf elsewhere."""
    logits = bonus.masked_fill(~rep, NEG_INF)
    return logits - _safe_logsumexp(logits, rep.any(-1)).unsqueeze(-1)


def gate_log_probs(gate: torch.Tensor, rep: torch.Tensor, n_items: int, exclude_history: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log g, log(1 - g)) of gate logits (...,), exact where a component is empty: a window
    without items can only explore (g = 0); one holding every item, with explore excluding the
    history, can only repeat (g = 1)."""
    log_g, log_1mg = F.logsigmoid(gate), F.logsigmoid(-gate)
    has_hist = rep.any(-1)
    log_g = torch.where(has_hist, log_g, torch.full_like(log_g, NEG_INF))
    log_1mg = torch.where(has_hist, log_1mg, torch.zeros_like(log_1mg))
    if exclude_history:
        full = rep.sum(-1) >= n_items
        log_g = torch.where(full, torch.zeros_like(log_g), log_g)
        log_1mg = torch.where(full, torch.full_like(log_1mg, NEG_INF), log_1mg)
    return log_g, log_1mg


def mixture_log_probs(explore: torch.Tensor, items: torch.Tensor, bonus: torch.Tensor, rep: torch.Tensor,
                      gate: torch.Tensor, exclude_history: bool = EXPLORE_EXCLUDES_HISTORY) -> torch.Tensor:
    """log P(j) of every item under the mixture: explore (B, V + 1) catalogue logits ``q . e_j``;
    items/bonus/rep (B, L) the window's items, pointer logits and representative mask; gate (B,)
    logits. Column 0 (padding) is -inf; every real item is finite; ``exp`` sums to 1 per row."""
    n_items = explore.shape[1] - 1
    log_g, log_1mg = gate_log_probs(gate, rep, n_items, exclude_history)
    idx = torch.where(rep, items, torch.zeros_like(items))
    # The explore component's support: every real item, less the window's items when it excludes the
    # history. Written as -inf straight into a copy of the logits (B x L writes), so that the (B, V)
    # tensors are passed over as few times as possible: this is the whole cost of batch scoring.
    masked = explore.index_fill(1, torch.tensor([PAD], device=explore.device), NEG_INF)
    if exclude_history:
        masked.scatter_(1, idx, NEG_INF)  # non-representatives point at the padding column, already -inf
    lse = torch.logsumexp(masked, dim=-1)
    lse = torch.where(lse == NEG_INF, torch.zeros_like(lse), lse)  # an empty component stays -inf, never NaN
    grad = torch.is_grad_enabled() and masked.requires_grad  # in place only where autograd keeps no copy
    explore_lp = masked.add_(log_1mg.unsqueeze(1)) if not grad else masked + log_1mg.unsqueeze(1)
    explore_lp = explore_lp.sub_(lse.unsqueeze(1)) if not grad else explore_lp - lse.unsqueeze(1)
    repeat_lp = log_g.unsqueeze(1) + repeat_log_probs(bonus, rep)  # (B, L), -inf off the representatives
    if not exclude_history:  # a window item also gets its explore share
        both = torch.logaddexp(repeat_lp.masked_fill(~rep, 0.0), explore_lp.gather(1, idx).masked_fill(~rep, 0.0))
        repeat_lp = both.masked_fill(~rep, NEG_INF)
    # scatter the window items' values in; non-representatives write -inf into the padding column
    return explore_lp.scatter_(1, idx, repeat_lp) if not grad else explore_lp.scatter(1, idx, repeat_lp)


def mixture_nll(
    queries: torch.Tensor,
    targets: torch.Tensor,
    emb: torch.Tensor,
    items: torch.Tensor,
    bonus: torch.Tensor,
    rep: torch.Tensor,
    gate: torch.Tensor,
    loss_cfg: LossConfig,
    negatives: torch.Tensor | None,
    log_q: torch.Tensor | None,
    exclude_history: bool = EXPLORE_EXCLUDES_HISTORY,
) -> torch.Tensor:
    """(M,) ``-log P(target)`` under the repeat / explore mixture, in log space.

    queries (M, D); targets (M,); emb (V + 1, D); items/bonus/rep (M, L): each query's window items,
    pointer logits and representative mask; gate (M,) logits of g. The explore softmax runs over
    the whole catalogue (``negatives`` None; label smoothing spreads over every real item) or over
    the target plus the shared ``negatives`` (these logQ-corrected by ``log_q`` when given; a negative
    equal to the target, or, with ``exclude_history``, inside the window, is masked). A target
    outside the window is explained by explore alone; one inside by repeat (and, without
    ``exclude_history``, explore too). Never builds the (M, V) log-probability matrix.
    """
    n_items = emb.shape[0] - 1
    log_g, log_1mg = gate_log_probs(gate, rep, n_items, exclude_history)
    log_rep = repeat_log_probs(bonus, rep)  # (M, L)
    at_target = rep & (items == targets[:, None])  # at most one representative per item
    in_hist = at_target.any(-1)
    repeat_t = log_g + torch.where(in_hist, log_rep.masked_fill(~at_target, 0.0).sum(-1),
                                   torch.full_like(log_g, NEG_INF))
    s_t = (queries * emb[targets]).sum(-1)  # (M,)
    idx = torch.where(rep, items, torch.zeros_like(items))
    smoothing = 0.0
    if negatives is None:
        scores = queries @ emb.T  # (M, V + 1); masked in place (the matmul does not keep its output)
        scores[:, PAD] = NEG_INF
        if exclude_history:
            scores.scatter_(1, idx, NEG_INF)
        has_explore = (rep.sum(-1) < n_items) if exclude_history else torch.ones_like(in_hist)
        lse = _safe_logsumexp(scores, has_explore)
        explore_t = s_t - lse
        smoothing = loss_cfg.label_smoothing
    else:
        pos = s_t
        neg = queries @ emb[negatives].T  # (M, N)
        if log_q is not None:  # negatives only, as in losses.sampled_softmax
            neg = neg - log_q[negatives][None, :]
        drop = negatives[None, :] == targets[:, None]  # accidental hits
        if exclude_history:
            uniq, inverse = torch.unique(negatives, return_inverse=True)  # sorted
            col = torch.searchsorted(uniq, items).clamp(max=len(uniq) - 1)  # (M, L)
            hit = rep & (uniq[col] == items)  # a window item that is also a negative
            inside = torch.zeros(len(items), len(uniq), device=items.device).scatter_add(1, col, hit.float()) > 0
            drop = drop | inside[:, inverse]
        neg = neg.masked_fill(drop, NEG_INF)
        explore_t = pos - torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1)
        lse = None
    explore_t = log_1mg + explore_t
    if exclude_history:
        log_p = torch.where(in_hist, repeat_t, explore_t)
    else:
        log_p = torch.where(in_hist, torch.logaddexp(repeat_t.masked_fill(~in_hist, 0.0), explore_t), explore_t)
    nll = -log_p
    if not smoothing:
        return nll
    assert lse is not None
    # label smoothing: -mean_j log P(j) over the real items, from per-row sums (no (M, V) matrix)
    s_hist = torch.bmm(emb[items], queries.unsqueeze(-1)).squeeze(-1)  # (M, L) q . e of window items
    hist_lp = log_g.unsqueeze(1) + log_rep
    explore_hist = log_1mg.unsqueeze(1) + s_hist - lse.unsqueeze(1)
    if not exclude_history:
        hist_lp = torch.logaddexp(hist_lp.masked_fill(~rep, 0.0), explore_hist.masked_fill(~rep, 0.0))
    hist_sum = hist_lp.masked_fill(~rep, 0.0).sum(-1)
    n_hist = rep.sum(-1).to(s_t.dtype)
    s_all = queries @ emb[1:].sum(0)  # (M,) sum of q . e_j over the real items
    n_rest, rest_s = n_items - n_hist, s_all - s_hist.masked_fill(~rep, 0.0).sum(-1)  # the other items
    rest_sum = torch.where(n_rest > 0, n_rest * (log_1mg - lse) + rest_s, torch.zeros_like(s_t))
    smooth = -(hist_sum + rest_sum) / n_items
    return (1.0 - smoothing) * nll + smoothing * smooth
