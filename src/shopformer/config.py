"""Frozen, typed configuration.

Every section rejects unknown keys and values of the wrong type (pydantic strict mode), so a
typo such as ``lr`` for ``learning_rate`` fails loudly with the key named instead of being
silently ignored. The fully resolved config is saved as JSON next to every trained model.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelConfig(_Section):
    name: str = "sasrec"
    dim: int = Field(64, ge=4)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    emb_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    max_len: int = Field(50, ge=2)
    ffn_mult: int = Field(4, ge=1)
    # Where the Transformer blocks normalise. "pre" (GPT-2 style, x + f(LN(x)), final LN) trains
    # stably when deep; "post" (the original Transformer and SASRec/RecBole, LN(x + f(x))) is the
    # layout RecBole's SASRec uses, for side-by-side runs. It does not stop a tied model ranking the
    # newest event first (bench/seen_items.py: 87% either way); ``tie_output`` does. "ligr" (LinkedIn's
    # LiGR layer, used by eSASRec, Tikhonovich et al. 2025) is pre-LN with each sub-layer's output
    # scaled by a learned sigmoid gate of the residual stream and a SwiGLU feed-forward.
    norm: Literal["pre", "post", "ligr"] = "pre"
    # Score items with the input item table (tied, Kang & McAuley) or a table of their own. Tied
    # vectors share what is learnt about an item between reading and predicting it, which is best
    # when seen items are removed from the ranking; but an item is then its own nearest vector, so
    # with seen items kept a tied model ranks the newest event first in ~87% of Beauty rankings
    # (bench/seen_items.py). Untied output has no such pull: use it when seen items stay rankable
    # on a log with few repeats.
    tie_output: bool = True
    # Where position 0 is. "start": the first event of the window. "end": the newest event, as in
    # SASRec's left-padded windows and RecTools' inverse positions, so "the last thing viewed" always
    # has the same position vector and recency need not be inferred from the window length.
    # Measured below "start" on Beauty (valid 0.0579 vs 0.0606-0.0618; docs/measurements.md, stop 27).
    positions: Literal["start", "end"] = "start"
    # Standard deviation of every embedding table's initial values (items, positions, behaviours, time
    # gaps, categories). None = 1 / sqrt(dim): unit-norm random item vectors. 0.02 (BERT's and RecBole's
    # value; configs/default.toml) starts every item near 0, so an item the log rarely shows is not left with
    # a random unit vector that it is scored and (tied) read with. On the Taobao pv sample, where items average
    # 1.4 events, that was most of shopformer's gap to RecBole (docs/measurements.md, stop 28).
    init_std: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    # Behaviour-aware inputs (issue 3). Each is ignored when the data has no such signal.
    use_behaviour: bool = True
    use_time_gap: bool = True
    use_category: bool = False
    time_buckets: int = Field(32, ge=2)
    # BERT4Rec: probability of masking an item during training.
    mask_prob: float = Field(0.2, gt=0.0, lt=1.0)
    # LoRA adapters (pre-train -> fine-tune), 0 disables.
    lora_rank: int = Field(0, ge=0)
    # SASRec only: an ensemble of this many independent encoders trained side by side in the one loop,
    # each on its own dim / members columns of the item table with its own loss. A state and an item
    # vector are the members' concatenated, so a score is the sum of the members' scores (a product of
    # experts) and everything downstream (serving, FAISS, explanations) sees one model of width dim.
    # 3 x 64 on Beauty: test NDCG@10 +2.4% (validation +4.1%) at 3x the training time (docs/measurements.md, stop 27).
    members: int = Field(1, ge=1)
    # SASRec / BERT4Rec: BSARec's "beyond self-attention" mixer (Shin et al., AAAI 2024). Each block's
    # attention output becomes (1 - freq_mix) * attention + freq_mix * filter, where the filter keeps the
    # ``freq_keep`` lowest Fourier bins of the window (a smooth summary of the history) plus a learned
    # per-dimension share of the rest. Causal here: position t filters only the events up to t (see
    # ``models.layers.LowPassFilter``). BSARec's Beauty setting is freq_mix 0.7 with c = 5 (3 bins). 0 turns it off.
    freq_mix: float = Field(0.0, ge=0.0, le=1.0)
    freq_keep: int = Field(3, ge=1)
    # Score items by direction only (cosine scoring, as in sampled-softmax studies, Wu et al. 2023):
    # output item vectors are L2-normalised (each member's columns on their own), so an item's norm
    # cannot carry its popularity; the state's norm, learnt through the final LayerNorm's gain, is the
    # softmax's inverse temperature (about sqrt(dim) = 8 at the start, i.e. tau ~ 0.12).
    cosine: bool = False

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelConfig:
        if self.dim % self.members:
            raise ValueError(f"model.dim={self.dim} must be divisible by model.members={self.members}")
        if (self.dim // self.members) % self.heads:
            raise ValueError(f"model.dim / model.members = {self.dim // self.members} must be divisible by "
                             f"model.heads={self.heads}")
        return self

    @property
    def member_dim(self) -> int:
        """Width of one ensemble member (= dim without an ensemble)."""
        return self.dim // self.members

    @property
    def embedding_std(self) -> float:
        """Initial spread of every embedding table: ``init_std``, else 1 / sqrt(member width)."""
        return self.init_std or self.member_dim**-0.5


class LossConfig(_Section):
    kind: Literal["ce", "sampled"] = "ce"
    # sampled softmax: ``negatives`` drawn from ``sampler`` plus up to ``in_batch`` targets of other
    # positions in the batch (in-batch negatives, distributed as item frequency), all shared by the
    # batch; logQ correction subtracts the log expected count of each item in that mixed sample
    negatives: int = Field(256, ge=0)
    sampler: Literal["uniform", "popularity"] = "uniform"
    in_batch: int = Field(0, ge=0)
    # Draw ``negatives`` for every target position instead of once for the batch (RecTools, eSASRec):
    # every item is then pushed down a little on most steps rather than a few items a lot. Costs
    # (real targets x negatives x dim) floats per step, and takes no in-batch negatives.
    per_position: bool = False
    logq_correction: bool = True
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Full cross-entropy: leave the user's own items (a causal model: the window up to each position;
    # a masked one: the whole window), never the target itself, out of that position's softmax, as
    # the ranking does with eval.exclude_seen. The model then need not learn to push them down.
    # Opt-in: level with the default SASRec on Beauty over seeds 42 / 1 (docs/measurements.md, stop 31).
    mask_seen: bool = False

    @model_validator(mode="after")
    def _some_negatives(self) -> LossConfig:
        if self.mask_seen and self.kind != "ce":
            raise ValueError("loss.mask_seen leaves the history out of the full softmax: it needs loss.kind='ce'")
        if self.kind == "sampled" and self.negatives + self.in_batch == 0:
            raise ValueError("loss.kind='sampled' needs loss.negatives > 0 or loss.in_batch > 0")
        if self.per_position and (self.in_batch or not self.negatives):
            raise ValueError("loss.per_position draws loss.negatives (> 0) for each position; set loss.in_batch = 0")
        return self


class TaskConfig(_Section):
    """Which heads are trained and with what weight (multi-task on one encoder)."""

    kind: Literal["next-item", "next-purchase", "next-action", "intent", "multi"] = "next-item"
    target_behaviour: str | None = None  # e.g. "buy"; None means the data's most valuable type
    intent_horizon: int = Field(10, ge=1)  # purchase within the next N events
    # Purchase within the next T seconds instead (e.g. 86400: the one-day horizon an ad campaign
    # uses); needs timestamps. Predictions whose horizon runs past the data they may read are censored.
    intent_seconds: int | None = Field(None, ge=1)

    @property
    def intent_text(self) -> str:
        """The intent horizon in words: 'within the next 10 events' / 'within 24 h'."""
        if self.intent_seconds is None:
            return f"within the next {self.intent_horizon} events"
        s = self.intent_seconds
        unit = next(((n, u) for n, u in ((86400, "d"), (3600, "h"), (60, "min")) if s % n == 0), (1, "s"))
        return f"within {s // unit[0]} {unit[1]}"
    w_item: float = Field(1.0, ge=0.0)
    w_target: float = Field(1.0, ge=0.0)
    w_action: float = Field(0.2, ge=0.0)
    w_intent: float = Field(0.2, ge=0.0)


class TextConfig(_Section):
    """Item titles and attributes fused with the item-id embeddings (models/text.py; titles need
    ``shopformer[text]``). Paths are relative to the config file."""

    titles: str | None = None  # TSV with item_id and title columns
    # brand, categories, ...: JSON {item_id: [attribute, ...]}, or a CSV/TSV with item_id and attribute columns
    attributes: str | None = None
    # each item's neighbours in the training sequences as attributes (no catalogue needed): this many
    # columns, the items with the most distinct neighbours; 0 = off
    neighbours: int = Field(0, ge=0)
    neighbour_window: int = Field(1, ge=1, le=10)  # items at most this many events apart are neighbours
    id_dropout: float = Field(0.0, ge=0.0, lt=1.0)  # share of warm items trained on their side vector alone

    @property
    def fused(self) -> bool:
        """Whether any side information is fused into the item table."""
        return bool(self.titles or self.attributes or self.neighbours)


class AugmentConfig(_Section):
    """On-the-fly sequence augmentation (``data/augment.py``): each probability is per window."""

    crop: float = Field(0.0, ge=0.0, le=1.0)  # keep a random contiguous (1 - ratio) share
    mask: float = Field(0.0, ge=0.0, le=1.0)  # replace a ratio share of items by [MASK]
    reorder: float = Field(0.0, ge=0.0, le=1.0)  # shuffle a random stretch of ratio length
    substitute: float = Field(0.0, ge=0.0, le=1.0)  # replace a ratio share by random items
    prefix: float = Field(0.0, ge=0.0, le=1.0)  # keep a random prefix (at least 2 events)
    ratio: float = Field(0.2, gt=0.0, le=1.0)  # fraction of a sequence each operator touches
    # Contrastive auxiliary loss (InfoNCE between two views' last hidden states), 0 disables.
    contrastive_weight: float = Field(0.0, ge=0.0)
    contrastive_temperature: float = Field(1.0, gt=0.0)
    # "cl4srec": each view gets one of crop / mask / reorder; "dropout": views differ only by
    # dropout (DuoRec's unsupervised augmentation).
    contrastive_views: Literal["cl4srec", "dropout"] = "cl4srec"


class DPConfig(_Section):
    """Differentially private training, DP-SGD (training/privacy.py): every training window's gradient is
    clipped to ``max_grad_norm`` (L2) and Gaussian noise of std ``noise_multiplier * max_grad_norm`` is
    added to each batch's sum; the (epsilon, delta) spent is reported in metrics.json (Opacus' RDP
    accountant). The unit is one training window: one user with ``train.sliding_window = false``."""

    noise_multiplier: float = Field(1.0, ge=0.0, allow_inf_nan=False)
    max_grad_norm: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    delta: float = Field(1e-5, gt=0.0, lt=1.0)


class TrainConfig(_Section):
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = Field(5.0, gt=0.0)
    patience: int = Field(10, ge=1)
    monitor: str = "ndcg@10"
    eval_every: int = Field(1, ge=1)
    max_minutes: float | None = Field(None, gt=0.0)
    seed: int = 42
    threads: int | None = Field(None, ge=1)
    sliding_window: bool = True
    # After early stopping picks the best epoch on validation, train a fresh model (same seed
    # and schedule) on training + validation events for that many epochs and test that one.
    refit: bool = False
    # Opt-in: serve a mixture of the model with its best one or two baselines, tuned on validation
    # (evaluation/blend.py), so the served answer is never worse than either on validation.
    blend: bool = False
    # Once the blend is chosen (on counts of training events, the model's data), its baselines are
    # refit on training + validation events: counts have no epochs to choose, and the histories it
    # serves already end with those events. The model itself is not refit. "training" keeps the
    # counts the mixture was chosen with (the served rows recorded before stop 29). Next-item runs;
    # the multi-behaviour blend (task.kind != "next-item") keeps training counts.
    blend_counts: Literal["training", "validation"] = "validation"
    # Training step precision (docs/scale-training.md): "bf16" autocasts the encoder to bfloat16
    # (the loss stays fp32); "auto" = bf16 only where the hardware has native bf16 (CUDA, or a CPU
    # with AMX / AVX512-BF16), else fp32.
    precision: Literal["fp32", "bf16", "auto"] = "fp32"
    compile: bool = False  # torch.compile the model's encoder (dynamic shapes; first steps compile)
    # Polyak averaging: validation, early stopping and the returned model use an exponential moving
    # average of the trained weights (this decay per optimiser step; 0.999 averages ~1,000 steps).
    # It anneals without a schedule that must know in advance where early stopping will land. 0 = off.
    ema: float = Field(0.0, ge=0.0, lt=1.0)
    dp: DPConfig | None = None  # [train.dp]: differentially private training (DP-SGD), off by default


class EvalConfig(_Section):
    ks: tuple[int, ...] = (5, 10, 20)
    exclude_seen: bool = True
    batch_size: int = Field(512, ge=1)
    bootstrap: int = Field(1000, ge=0)
    max_users: int | None = Field(None, ge=1)


class SplitConfig(_Section):
    kind: Literal["loo", "temporal"] = "loo"
    # Temporal split boundaries: Unix seconds, or a number strictly between 0 and 1 read as a quantile
    # of event times (0.9 = the time before which 90% of all events happened), NOT a fraction of the
    # time range: on a log made of short bursts the two differ a lot.
    valid_start: float | None = None
    test_start: float | None = None
    # Fewer validation or test targets than this is reported as a warning (CLI, report, metrics.json):
    # metrics on a handful of targets are noise. A split with none is an error.
    min_targets: int = Field(100, ge=1)


class Config(_Section):
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    task: TaskConfig = TaskConfig()
    augment: AugmentConfig = AugmentConfig()
    text: TextConfig = TextConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    split: SplitConfig = SplitConfig()

    @model_validator(mode="after")
    def _next_item_only_options(self) -> Config:
        # Multi-task runs also fit the heads' calibration on validation, which a refit on
        # validation events would leak into.
        for on, key in ((self.train.refit, "train.refit"), (self.text.titles, "text.titles"),
                        (self.text.attributes, "text.attributes"), (self.text.neighbours, "text.neighbours"),
                        (self.loss.kind == "sampled" and self.loss.per_position, "loss.per_position"),
                        (self.model.members > 1, "model.members"), (self.loss.mask_seen, "loss.mask_seen")):
            if on and self.task.kind != "next-item":
                raise ValueError(f"{key} is supported for task.kind='next-item' only, not {self.task.kind!r}")
        if self.loss.mask_seen and not self.eval.exclude_seen:
            raise ValueError("loss.mask_seen trains without the user's own items in the softmax: it needs "
                             "eval.exclude_seen = true, so the ranking leaves them out too")
        if self.train.blend and self.train.refit:
            raise ValueError("train.blend tunes its mixture on validation events, which train.refit trains on: "
                             "use one of the two")
        if self.text.fused and not self.model.tie_output:
            raise ValueError("text.titles, text.attributes and text.neighbours are fused into the tied item table: "
                             "that needs model.tie_output = true")
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def override(self, **sections: dict[str, Any]) -> Config:
        """Return a copy with some section fields replaced, re-validated."""
        data = self.model_dump()
        for section, values in sections.items():
            if section not in data:
                raise ConfigError(f"unknown config section {section!r}")
            data[section].update(values)
        return config_from_dict(data)


class ConfigError(ValueError):
    """A config file or override that does not validate; the message names each bad key."""


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {key}: {e['msg']}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    # JSON has no tuples; accept lists for tuple fields by converting in lax mode only there.
    try:
        return Config.model_validate(data, strict=False) if _only_lists_differ(data) else Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def _only_lists_differ(data: dict[str, Any]) -> bool:
    """True when strict validation would only fail on list-vs-tuple (JSON round trips)."""
    try:
        Config.model_validate(data)
        return False
    except ValidationError as err:
        return all(e["type"] == "tuple_type" for e in err.errors())


def load_config(path: str | Path | None) -> Config:
    """Load a TOML or JSON config; ``None`` gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    text = p.read_text()
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{p}: cannot parse: {err}") from None
    section = data.get("text")
    paths = section if isinstance(section, dict) else {}
    for key in ("titles", "attributes"):
        path = paths.get(key)
        if isinstance(path, str) and not Path(path).is_absolute():  # relative to the config file
            paths[key] = str((p.parent / path).resolve())
    return config_from_dict(data, source=str(p))


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value`` (value as JSON, else a plain string) for CLI overrides."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return section, key, value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    grouped: dict[str, dict[str, Any]] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        grouped.setdefault(section, {})[key] = value
    return cfg.override(**grouped) if grouped else cfg
