"""Event timestamps on the HTTP API: Unix seconds or ISO-8601 strings, always in a bounded range.

Accepted forms (the published OpenAPI schema states exactly these, so a value the schema allows is
never refused):

- an integer of Unix seconds in ``0 .. MAX_TIMESTAMP`` (9999-12-31T23:59:59Z). A millisecond
  timestamp of today (~1.7e12) is out of range and refused, never stored as the "newest event forever";
- an ISO-8601 date or date-time with a year in 1971..9998: ``2024-05-01``, ``2024-05-01T10``,
  ``2024-05-01 10:30``, ``2024-05-01T10:30:00.250Z``, ``2024-05-01T10:30:00+08:00``. No offset
  means UTC; fractions are floored to whole seconds. These are the rules of ``prepare``
  (``shopformer.data.timestamps``) for the same strings; the year range keeps every offset inside
  the integer range.

A float with no fraction (``1458.0``) is an integer for JSON Schema and is taken as one; other
floats, booleans, numeric strings and anything else are refused with a message naming the range.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z: every stored timestamp is exact in a float64 too
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_YEAR = r"(?:197[1-9]|19[89][0-9]|[2-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
_LEAP = (r"(?:19(?:7[26]|8[048]|9[26])|[2-9][0-9](?:0[48]|[2468][048]|[13579][26])"
         r"|(?:[2468][048]|[3579][26])00)")
_MONTH_DAY = (r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)"
              r"|(?:0[13578]|1[02])-31)")
_TIME = (r"(?:[T ](?:[01][0-9]|2[0-3])(?:Z|:[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
         r"(?:Z|[+-](?:[01][0-9]|2[0-3]):?[0-5][0-9])?)?)?")
ISO_PATTERN = rf"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP}-02-29){_TIME}$"
_ISO = re.compile(ISO_PATTERN)

TIMESTAMP_DOC = (f"Unix seconds (integer, 0..{MAX_TIMESTAMP}) or an ISO-8601 date / date-time with a year in "
                 "1971..9998 (no offset = UTC; fractions floored); the server's clock when omitted")


def _out_of_range(value: object) -> PydanticCustomError:
    fine = isinstance(value, int) and MAX_TIMESTAMP < value < 10**20
    hint = " (it looks like milli- or microseconds: send seconds)" if fine else ""
    return PydanticCustomError(
        "timestamp_range", "timestamp must be Unix seconds in 0..{max} or an ISO-8601 date-time (years "
        "1971..9998){hint}", {"max": MAX_TIMESTAMP, "hint": hint})


def parse_timestamp(value: Any) -> int:
    """Unix seconds of an API timestamp (see the module docstring); raises a pydantic error."""
    if type(value) is float and value.is_integer():  # JSON Schema: 1458.0 is an integer too
        value = int(value)
    if type(value) is int:  # not bool
        if 0 <= value <= MAX_TIMESTAMP:
            return value
        raise _out_of_range(value)
    if isinstance(value, str) and len(value) <= 40 and _ISO.match(value):
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        dt = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt
        return (dt - _EPOCH) // timedelta(seconds=1)
    raise PydanticCustomError(
        "timestamp_type", "timestamp must be an integer of Unix seconds (0..{max}) or an ISO-8601 date-time "
        "string such as 2024-05-01T10:30:00Z", {"max": MAX_TIMESTAMP})


Timestamp = Annotated[
    int,
    PlainValidator(parse_timestamp),
    WithJsonSchema({
        "anyOf": [{"type": "integer", "minimum": 0, "maximum": MAX_TIMESTAMP},
                  {"type": "string", "pattern": ISO_PATTERN, "maxLength": 40}],
        "description": TIMESTAMP_DOC,
    }),
]
