"""Property-based tests (hypothesis) of the HTTP schemas: every value the published schema allows is
accepted and means what ``prepare`` says it means; anything else is a clean validation error."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shopformer.data.timestamps import parse_time_value
from shopformer.serving.schemas import AdHocRequest, EventBatch
from shopformer.serving.store import InvalidEvent, StoredEvent
from shopformer.serving.stored import validate_events
from shopformer.serving.timestamps import ISO_PATTERN, MAX_TIMESTAMP, parse_timestamp

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_timestamp_is_a_bounded_int_or_a_clean_error(value: object) -> None:
    try:
        ts = parse_timestamp(value)
    except ValueError:  # pydantic's PydanticCustomError is a ValueError
        return
    assert type(ts) is int and 0 <= ts <= MAX_TIMESTAMP


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.from_regex(re.compile(ISO_PATTERN), fullmatch=True))
def test_every_published_iso_string_is_accepted_and_agrees_with_prepare(text: str) -> None:
    ts = parse_timestamp(text)
    assert 0 <= ts <= MAX_TIMESTAMP
    assert ts == parse_time_value(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_TIMESTAMP) | st.integers(min_value=MAX_TIMESTAMP + 1) |
       st.integers(max_value=-1))
def test_integer_range_is_exactly_the_published_one(value: int) -> None:
    if 0 <= value <= MAX_TIMESTAMP:
        assert parse_timestamp(value) == value
    else:
        with pytest.raises(ValueError, match="0..253402300799"):
            parse_timestamp(value)


event = st.fixed_dictionaries(
    {"user_id": json_values, "item_id": json_values},
    optional={"timestamp": json_values, "behaviour": json_values, "event_type": json_values, "price": json_values,
              "event_id": json_values, "colour": json_values},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(event, max_size=4))
def test_event_batches_validate_or_fail_cleanly_and_stores_accept_what_validates(events: list[dict]) -> None:
    try:
        batch = EventBatch.model_validate({"events": events})
    except ValidationError:
        return
    stored = [StoredEvent(e.user_id, e.item_id, 0 if e.timestamp is None else e.timestamp, e.behaviour,
                          e.session_id, e.category_id, e.price, e.event_id) for e in batch.events]
    try:
        validate_events(stored)  # what the schema accepts, the stores accept
    except InvalidEvent as err:  # pragma: no cover - a failure message names the event
        raise AssertionError(f"schema accepted what the store refuses: {err}") from None


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_adhoc_requests_validate_or_fail_cleanly(body: object) -> None:
    with contextlib.suppress(ValidationError):  # anything else (TypeError, ...) fails the test
        AdHocRequest.model_validate(body if isinstance(body, dict) else {"history": body})
