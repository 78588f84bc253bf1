"""Request and response bodies of the v1 API (they are also the OpenAPI documentation).

Requests are strict and closed: unknown fields, wrong JSON types (``"5"`` for a number, ``5``
for an id) and empty ids are 4xx errors that name the field, never silently coerced. Ids are
strings, exactly as ``prepare`` keeps raw ids.

The behaviour of an event (view, cart, purchase, ...) is called ``behaviour`` everywhere: in
events, ad-hoc histories and the ``behaviour`` query of recommendations. ``event_type``, its old
name in event bodies, is still accepted as a deprecated alias for one release.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, model_validator

from shopformer.serving.timestamps import TIMESTAMP_DOC, Timestamp

Id = Annotated[str, StringConstraints(min_length=1, max_length=256)]


def _integral(value: object) -> object:
    """JSON Schema counts 14.0 as an integer: take it as 14 (other floats stay errors)."""
    return int(value) if type(value) is float and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral)]
RUN_DIR_MAX = 1024


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


BEHAVIOUR_DOC = ("behaviour of the event, e.g. pv / cart / buy (open vocabulary: a name the serving model does not "
                 "know is stored, and its event is skipped when scoring and reported)")
EVENT_TYPE_DOC = ("deprecated alias of `behaviour` (its old name), accepted for one more release and then removed; "
                  "send `behaviour` instead. Giving both is an error")
EVENT_TYPE_DEPRECATED = "event_type is a deprecated alias of behaviour"


class _WithBehaviour(_Closed):
    """Folds the deprecated ``event_type`` alias into ``behaviour`` (subclasses declare both).

    Giving both is an error, whatever their values: the published schema says so
    (``not: {required: [behaviour, event_type]}``), and the server refuses exactly what it forbids."""

    model_config = ConfigDict(json_schema_extra={"not": {"required": ["behaviour", "event_type"]}})

    @model_validator(mode="after")
    def _fold_event_type(self) -> Self:
        if "event_type" in self.model_fields_set and "behaviour" in self.model_fields_set:
            raise ValueError("give behaviour or its deprecated alias event_type, not both; send behaviour only")
        old = self.__dict__.get("event_type")  # not the attribute: it warns (deprecated)
        if old is not None:
            self.__dict__["behaviour"] = old
        return self


class EventIn(_WithBehaviour):
    """One event in the canonical schema (see ``shopformer.data.schema``)."""

    user_id: Id
    item_id: Id
    timestamp: Timestamp | None = Field(None, description=TIMESTAMP_DOC)
    behaviour: Id | None = Field(None, description=BEHAVIOUR_DOC)
    event_type: Id | None = Field(None, description=EVENT_TYPE_DOC, deprecated=EVENT_TYPE_DEPRECATED)
    session_id: Id | None = None
    category_id: Id | None = None
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    event_id: Id | None = Field(None, description="idempotency key: an event_id already stored is not applied again")


class EventBatch(_Closed):
    events: list[EventIn] = Field(min_length=1)


class EventsAck(BaseModel):
    model_version: str
    accepted: int = Field(description="events newly stored (durable when this answer is sent)")
    duplicates: int = Field(description="events skipped because their event_id was already stored")
    duplicate_event_ids: list[str]
    unknown_items: list[str] = Field(description="item ids the serving model does not know: stored, not scored")
    unknown_behaviours: list[str] = Field(
        default_factory=list,
        description="behaviour names the serving model does not know: stored, their events not scored")
    forgotten: int = Field(0, description="events of a forgotten user dated at or before the deletion: not "
                           "stored (a replay of deleted data)")


class ScoredItem(BaseModel):
    item_id: str
    score: float


class ReasonOut(BaseModel):
    """A history event that raised a recommended item's score (``Recommender.explain``, occlusion)."""

    item_id: str
    behaviour: str | None = Field(description="the event's behaviour (null when the history gave none)")
    position: int = Field(description="index of the event in the history as sent, or as stored (its last "
                          "max_len events) for a user's recommendations; 0 = oldest")
    weight: float = Field(description="drop of the item's model score when this event is removed")


class RecommendedItem(ScoredItem):
    repeat: bool = Field(description="true: the item is already in the user's history (a repeat, all of the "
                         "history as stored or sent, not just the model's window); false: a discovery")
    explanation: str | None = Field(None, description="explain=true only: 'because you viewed X and carted Y' "
                                    "('' when no event raised the item, e.g. a popularity answer)")
    reasons: list[ReasonOut] | None = Field(None, description="explain=true only: the events behind "
                                            "`explanation`, strongest first")


MIN_NEW_SHARE_DOC = ("at least ceil(min_new_share * k) of the k items are discoveries (not in the history): the best "
                     "new items fill in for the repeats left out, each group keeps the model's order. 0..1; "
                     "exclude_seen=true is 1.0 (discovery only). Given without exclude_seen, the run's default "
                     "exclusion does not apply")


class RecommendationsOut(BaseModel):
    model_version: str
    user_id: str | None = None
    items: list[RecommendedItem]
    fallback: bool = Field(description="true when the answer is the popularity ranking")
    fallback_reason: str | None = Field(None, description="unknown_user | empty_history | no_known_items")
    skipped_items: list[str] = Field(description="history item ids unknown to the model (not scored)")
    skipped_behaviours: list[str] = Field(
        default_factory=list,
        description="history behaviour names unknown to the model (their events are not scored, never remapped)")
    history_length: int


class HistoryEventIn(_WithBehaviour):
    item_id: Id
    behaviour: Id | None = Field(None, description=BEHAVIOUR_DOC)
    event_type: Id | None = Field(None, description=EVENT_TYPE_DOC, deprecated=EVENT_TYPE_DEPRECATED)
    timestamp: Timestamp | None = Field(None, description=TIMESTAMP_DOC)


BEHAVIOUR_QUERY_DOC = ("rank for the next event of this behaviour ('*' = any); the published schema lists the "
                       "names the served model can rank for, an unknown name is a 422 listing the known ones")


EXPLAIN_DOC = ("each item also carries the history events that drove it (`reasons`, strongest first) and "
               "`explanation`, their text; costs one more forward pass over leave-one-out copies of the history")


class AdHocRequest(_Closed):
    history: list[HistoryEventIn] = Field(description="events oldest first; nothing is stored")
    k: JsonInt = Field(10, ge=1)
    exclude_seen: bool | None = None
    behaviour: Id | None = Field(None, description=BEHAVIOUR_QUERY_DOC)
    min_new_share: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False, description=MIN_NEW_SHARE_DOC)
    explain: bool = Field(False, description=EXPLAIN_DOC)


class SimilarOut(BaseModel):
    model_version: str
    item_id: str
    items: list[ScoredItem]


class ForgetOut(BaseModel):
    model_version: str
    user_id: str
    deleted_events: int


class ReloadIn(_Closed):
    run_dir: Annotated[str, StringConstraints(min_length=1, max_length=RUN_DIR_MAX, pattern=r"^[^\x00]+$")] = Field(
        description="run directory to load: relative to the server's reload root, or an absolute path under it")


class ReloadOut(BaseModel):
    model_version: str
    previous_version: str
    run_dir: str = Field(description="the run directory loaded, relative to the reload root")
    n_items: int
    index: str
    load_seconds: float


class HealthOut(BaseModel):
    status: str
    model_version: str
    store: str | None = None


class ErrorOut(BaseModel):
    detail: str | list[dict]
    model_version: str
