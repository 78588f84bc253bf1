"""Ingest options, the ingest error types and the column mapping.

A column *mapping* ``{canonical name: source column}`` says where each canonical column comes from;
the source column is a header/key name or a 0-based index. Columns whose source name already is a
canonical name are mapped automatically.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from shopformer.data import schema as S
from shopformer.data.raw import ORDER

Format = Literal["auto", "csv", "tsv", "parquet", "jsonl", "sequences"]
FORMATS: tuple[str, ...] = ("auto", "csv", "tsv", "parquet", "jsonl", "sequences")


class DataValidationError(ValueError):
    """Input that cannot become a dataset. ``errors`` holds the per-row errors when there are any."""

    def __init__(self, message: str, errors: pl.DataFrame | None = None) -> None:
        super().__init__(message)
        self.errors = errors


class MappingError(DataValidationError):
    """A column mapping that does not fit the data (unknown key, missing column, ...)."""


@dataclass(frozen=True)
class IngestOptions:
    """How to read and validate raw files. All inputs of one ``prepare`` share these options."""

    format: Format = "auto"
    delimiter: str | None = None  # None: by extension, else sniffed from the first line
    has_header: bool | None = None  # None: False when `columns` or an index mapping is given
    columns: tuple[str, ...] | None = None  # names of the file's columns (headerless files)
    mapping: Mapping[str, str | int] = field(default_factory=dict)  # canonical -> source column
    order_by: str | int | None = None  # numeric source column breaking ties within a timestamp
    time_format: str | None = None
    behaviours: tuple[str, ...] | None = None  # fixed behaviour vocabulary; None = open
    behaviour_names: Mapping[str, str] = field(default_factory=dict)  # rename raw codes, e.g. 4 -> buy
    strict: bool = False
    now: int | None = None  # Unix seconds; None = the current time (upper bound of valid times)
    encoding: str = "utf-8"  # of the text formats (csv/tsv/jsonl/sequences) and Parquet binary columns
    # replace user ids by HMAC-SHA256 pseudonyms (data/pseudonym.py); never written anywhere
    pseudonym_key: bytes | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------- mapping


def parse_mapping(items: Sequence[str]) -> dict[str, str | int]:
    """Parse CLI ``canonical=source`` pairs; an all-digit source is a 0-based column index."""
    mapping: dict[str, str | int] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise MappingError(f"mapping {item!r} must look like canonical=source, e.g. timestamp=ts")
        key = S.ALIASES.get(key, key)
        mapping[key] = int(value) if value.isdigit() else value
    return mapping


def load_mapping_file(path: str | Path) -> dict[str, str | int]:
    """Read a flat ``{canonical: source}`` mapping from a JSON or TOML file."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text()) if p.suffix == ".toml" else json.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise MappingError(f"{p}: cannot read mapping file: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str | int) for v in data.values()):
        raise MappingError(f"{p}: a mapping file must hold a flat table of canonical = source column")
    return {S.ALIASES.get(str(k), str(k)): v for k, v in data.items()}


def parse_behaviour_names(items: Sequence[str]) -> dict[str, str]:
    """Parse ``raw=name`` pairs (``4=buy``) into a renaming table for behaviour codes."""
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (k, sep, v) in zip(items, pairs, strict=True) if not (sep and k and v)]
    if bad:
        raise MappingError(f"behaviour names {bad} must look like raw=name, e.g. 4=buy")
    return {k.strip(): v.strip() for k, _, v in pairs}


def _check_mapping_keys(mapping: Mapping[str, str | int]) -> None:
    unknown = sorted(set(mapping) - set(S.CANONICAL))
    if unknown:
        raise MappingError(f"unknown canonical column(s) {unknown} in mapping; allowed: {list(S.CANONICAL)}")


def _resolve(
    path: str, names: Sequence[str], mapping: Mapping[str, str | int], order_by: str | int | None
) -> dict[str, int]:
    """Canonical (and order-by) column -> position in ``names``; fails on columns that do not exist."""
    wanted: dict[str, str | int] = {c: c for c in S.CANONICAL if c in names and c not in mapping}
    for alias, canonical in S.ALIASES.items():  # e.g. a header column named event_type
        if alias in names and canonical not in wanted and canonical not in mapping:
            wanted[canonical] = alias
    wanted.update(mapping)
    if order_by is not None:
        wanted[ORDER] = order_by
    resolved: dict[str, int] = {}
    for canonical, source in wanted.items():
        if isinstance(source, int):
            if not 0 <= source < len(names):
                raise MappingError(
                    f"{path}: mapping {canonical}={source}: column index out of range "
                    f"(the file has {len(names)} columns: {list(names)})"
                )
            resolved[canonical] = source
        elif source in names:
            resolved[canonical] = list(names).index(source)
        else:
            raise MappingError(
                f"{path}: mapping {canonical}={source!r}: no such column; available columns: {list(names)}"
            )
    missing = [c for c in S.REQUIRED if c not in resolved]
    if missing:
        hint = (
            " Only one column was found: check --delimiter, or use --format sequences for `user item1 item2 ...`."
            if len(names) == 1
            else ""
        )
        raise MappingError(
            f"{path}: required column(s) {missing} not found; available columns: {list(names)}. "
            f"Map them with --map {missing[0]}=<column>.{hint}"
        )
    return resolved
