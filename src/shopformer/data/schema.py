"""The one canonical event schema used everywhere (prepare, training, serving).

Raw ids stay strings until ``vocab.py`` encodes them; dense id 0 is padding in every
vocabulary, so a left-padded sequence is simply zeros on the left. Behaviour types form an
open vocabulary read from the data: nothing in the package hard-codes "pv" or "buy".
"""

from __future__ import annotations

import polars as pl

PAD = 0  # dense id of padding in every vocabulary (items, behaviours, categories)

# Raw canonical columns (what `prepare` reads, after the column mapping).
USER = "user_id"
ITEM = "item_id"
TIME = "timestamp"
BEHAVIOUR = "behaviour"  # the behaviour type of an event: view, cart, purchase, ... (open vocabulary)
SESSION = "session_id"
CATEGORY = "category_id"
PRICE = "price"

REQUIRED = (USER, ITEM)
OPTIONAL = (TIME, BEHAVIOUR, SESSION, CATEGORY, PRICE)
CANONICAL = REQUIRED + OPTIONAL
# Other names a source column (or a mapping key) may use for a canonical column: the headers of
# public shop logs (REES46 event_type / event_time / product_id / user_session, Tianchi behavior_type /
# time / item_category, RetailRocket visitorid / itemid / event, Tmall action_type). A column named
# exactly as the canonical one wins, then the first alias present in this order; --map wins over both.
ALIASES = {
    "event_type": BEHAVIOUR, "behavior_type": BEHAVIOUR, "behaviour_type": BEHAVIOUR, "behavior": BEHAVIOUR,
    "action_type": BEHAVIOUR, "action": BEHAVIOUR, "event": BEHAVIOUR,
    "event_time": TIME, "time": TIME, "ts": TIME, "datetime": TIME,
    "user": USER, "userid": USER, "visitorid": USER, "visitor_id": USER, "customer_id": USER,
    "item": ITEM, "itemid": ITEM, "product_id": ITEM, "productid": ITEM,
    "user_session": SESSION, "session": SESSION, "sessionid": SESSION,
    "item_category": CATEGORY, "category": CATEGORY, "categoryid": CATEGORY, "cat_id": CATEGORY,
}

# Dense columns written by `prepare` next to the raw ones.
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
BEHAVIOUR_IDX = "behaviour_idx"
CATEGORY_IDX = "category_idx"
ROW = "row"  # 1-based line/row of the event in its source file: ties keep file order
SOURCE = "source"

# The single behaviour type used when a data set has no behaviour column.
DEFAULT_BEHAVIOUR = "interaction"

EVENTS_SCHEMA: dict[str, pl.DataType] = {
    USER: pl.String(),
    ITEM: pl.String(),
    TIME: pl.Int64(),
    BEHAVIOUR: pl.String(),
    SESSION: pl.String(),
    CATEGORY: pl.String(),
    PRICE: pl.Float64(),
    USER_IDX: pl.Int32(),
    ITEM_IDX: pl.Int32(),
    BEHAVIOUR_IDX: pl.Int8(),
    CATEGORY_IDX: pl.Int32(),
}
