"""Writes the project's leave-last-out split as RecBole atomic benchmark files.

    python -m benchmarks.anchors.export_split --data PATH --out DIR

DIR/ml.{train,valid,test}.inter hold the train, validation and test events (user_id:token,
item_id:token, timestamp:float), and DIR/split.json their counts and the data fingerprint. Each
timestamp is replaced by the event's position in the project's one time order
(training/data/order.py), so that a sort by (user, timestamp) reproduces the project's tie-breaks
exactly.
"""
from __future__ import annotations

import argparse
import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from training.data import leave_last_out, load_dataset
from training.data.order import time_ordered
from training.data.schema import ITEM_ID, TIMESTAMP, USER_ID
from training.steps import data_fingerprint

PARTS = ("train", "valid", "test")
HEADER = {USER_ID: "user_id:token", ITEM_ID: "item_id:token", TIMESTAMP: "timestamp:float"}
_PART = "__part__"


def ranked_events(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """All parts' events with a `part` column and the timestamp replaced by the time-order rank."""
    events = pd.concat([frame.assign(**{_PART: name}) for name, frame in parts.items()],
                       ignore_index=True)
    ordered = time_ordered(events, per_user=False).assign(**{TIMESTAMP: np.arange(len(events))})
    _check_order(ordered)
    return ordered.sort_values([USER_ID, TIMESTAMP])


def _check_order(ordered: pd.DataFrame) -> None:
    """Per user, every train event comes before the validation event, and that before the test."""
    rank = {name: ordered[ordered[_PART] == name].groupby(USER_ID)[TIMESTAMP]
            for name in PARTS}
    for earlier, later in pairwise(PARTS):
        last, first = rank[earlier].max(), rank[later].min()
        shared = last.index.intersection(first.index)
        if not (last[shared] < first[shared]).all():
            raise AssertionError(f"{earlier} events after {later} events: the orders disagree")


def export_split(data: str, out: Path) -> dict[str, object]:
    """Writes the three .inter files and split.json into `out`; returns split.json's content."""
    dataset = load_dataset(data)
    split = leave_last_out(dataset.interactions)
    events = ranked_events(dict(zip(PARTS, (split.train, split.validation, split.test))))
    out.mkdir(parents=True, exist_ok=True)
    for name in PARTS:
        part = events.loc[events[_PART] == name, list(HEADER)].rename(columns=HEADER)
        part.to_csv(out / f"ml.{name}.inter", sep="\t", index=False)
    summary: dict[str, object] = {
        "dataset": dataset.name,
        "fingerprint": data_fingerprint(dataset),
        "users": int(events[USER_ID].nunique()),
        "users_evaluated": int(split.test[USER_ID].nunique()),
        "catalogue_items": len(dataset.items),
        "items_with_events": int(events[ITEM_ID].nunique()),
        "events": {name: int((events[_PART] == name).sum()) for name in PARTS},
    }
    (out / "split.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset path, as training.data.load_dataset")
    parser.add_argument("--out", required=True, type=Path, help="directory for the split files")
    args = parser.parse_args()
    print(json.dumps(export_split(args.data, args.out), indent=2))


if __name__ == "__main__":
    main()
