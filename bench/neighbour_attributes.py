"""Item "attributes" from the log itself: each item's neighbours in the training sequences.

An experiment for plain logs without a catalogue (issue 17, stop 33). For every user of a sequence
file (``user item item ...``, Beauty.txt) the last two events are left out (they are the validation
and test targets of the leave-one-out split), and each pair of consecutive training events (a, b)
gives a the token ``nb=b`` and b the token ``nb=a``. The JSON goes to ``text.attributes``, which keeps
the tokens held by 2+ items, at most the 1,024 most common: "next to one of the 1,024 busiest items".
An item with few events then shares the learned vectors of its busy neighbours.

    .venv/bin/python bench/neighbour_attributes.py ../shared/data/amazon_beauty/Beauty.txt out/beauty_nb.json
    .venv/bin/python bench/defaults.py --data beauty --no-refit --set text.attributes=out/beauty_nb.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def neighbours(lines: list[str], held_out: int = 2) -> dict[str, list[str]]:
    """user-item lines -> {item: sorted neighbour tokens} over each user's events but the last ``held_out``."""
    nb: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        seq = line.split()[1:]
        seq = seq[: len(seq) - held_out]
        for a, b in zip(seq, seq[1:], strict=False):
            if a != b:
                nb[a].add(f"nb={b}")
                nb[b].add(f"nb={a}")
    return {item: sorted(tokens) for item, tokens in nb.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sequences", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    nb = neighbours(args.sequences.read_text().splitlines())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(nb))
    print(f"{args.out}: {len(nb)} items with neighbours")


if __name__ == "__main__":
    main()
