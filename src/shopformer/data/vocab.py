"""Raw id <-> dense id vocabularies. Dense id 0 is padding; real ids start at 1."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

PAD_TOKEN = "<pad>"
PAD = 0  # dense id of the padding token in every vocabulary
VOCAB_NAMES = ("users", "items", "behaviours", "categories")  # the keys of vocab.json, in file order
COUNT = "n"  # the count column of :func:`ranked`
_JSON_CHUNK = 100_000


def ranked(counts: pl.DataFrame, name: str) -> pl.DataFrame:
    """Vocabulary order of a ``(name, n)`` count table: most frequent first, ties by the raw id."""
    return counts.sort([COUNT, name], descending=[True, False])


def vocab_json_chunks(tokens: Mapping[str, pl.Series]) -> Iterator[str]:
    """The text of ``vocab.json`` (byte-identical to :meth:`Vocabs.to_json`) from one token column per
    vocabulary (padding first), in pieces: a catalogue of millions of ids is never one Python list."""
    yield "{"
    for k, name in enumerate(VOCAB_NAMES):
        yield ("" if k == 0 else ", ") + json.dumps(name) + ": ["
        column = tokens[name]
        for start in range(0, len(column), _JSON_CHUNK):
            piece = json.dumps(column.slice(start, _JSON_CHUNK).to_list())[1:-1]
            yield ("" if start == 0 else ", ") + piece
        yield "]"
    yield "}"


@dataclass(frozen=True)
class Vocab:
    """One vocabulary: ``tokens[i]`` is the raw id of dense id ``i`` (``tokens[0]`` = padding)."""

    tokens: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.tokens or self.tokens[0] != PAD_TOKEN:
            raise ValueError("a vocabulary must start with the padding token")
        object.__setattr__(self, "index", {t: i for i, t in enumerate(self.tokens)})
        if len(self.index) != len(self.tokens):
            raise ValueError("duplicate tokens in vocabulary")

    def __len__(self) -> int:
        """Number of real tokens (padding excluded)."""
        return len(self.tokens) - 1

    @classmethod
    def build(cls, values: pl.Series) -> Vocab:
        """Deterministic: most frequent first, ties broken by the raw id string."""
        return cls.from_counts(values.drop_nulls().value_counts(name=COUNT), values.name)

    @classmethod
    def from_counts(cls, counts: pl.DataFrame, name: str) -> Vocab:
        """The vocabulary of a ``(name, n)`` count table (see :func:`ranked`)."""
        return cls((PAD_TOKEN, *ranked(counts, name)[name].cast(pl.String).to_list()))

    def encode(self, raw: list[str]) -> list[int]:
        """Dense ids, 0 for unknown raw ids (callers decide whether to skip or fail)."""
        return [self.index.get(r, 0) for r in raw]

    def decode(self, ids: np.ndarray | list[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def mapping_frame(self, name: str, dense_name: str, dtype: pl.DataType) -> pl.DataFrame:
        return pl.DataFrame(
            {name: list(self.tokens[1:]), dense_name: np.arange(1, len(self.tokens))},
            schema={name: pl.String, dense_name: dtype},
        )


@dataclass(frozen=True)
class Vocabs:
    users: Vocab
    items: Vocab
    behaviours: Vocab
    categories: Vocab

    def to_json(self) -> str:
        return json.dumps({k: list(getattr(self, k).tokens) for k in VOCAB_NAMES})

    @classmethod
    def from_json(cls, text: str) -> Vocabs:
        data = json.loads(text)
        return cls(**{k: Vocab(tuple(data[k])) for k in VOCAB_NAMES})

    @classmethod
    def load(cls, path: str | Path) -> Vocabs:
        return cls.from_json(Path(path).read_text())

    def behaviour_id(self, name: str) -> int:
        """Dense id of a behaviour name. The one resolver for data, CLI, recommender and HTTP: an
        unknown name is an error listing the known ones, never a silent fallback to another type."""
        bid = self.behaviours.index.get(str(name), PAD)
        if bid == PAD:
            raise UnknownBehaviourError(f"unknown behaviour {name!r}; known: {', '.join(self.behaviours.tokens[1:])}")
        return bid


class UnknownBehaviourError(ValueError):
    """A behaviour name the vocabulary does not hold (the message lists the known names)."""
