"""The Ray Data job: user ids in blocks → UserListScorer actors (one CPU each) → Parquet."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from batch.scoring import ScoringSpec, UserListScorer
from recsys.models import artifacts

WRITE_CPUS = 0.1


def select_users(spec: ScoringSpec, which: str) -> list[str]:
    """`all` known users of the embedding bundle's snapshot, or `top:N`, the N who have seen the
    most items (the users a cache prefill warms first)."""
    histories = artifacts.load_user_histories(spec.refs.paths["embedding"])
    if histories is None:
        raise ValueError(f"{spec.refs.paths['embedding']} has no user snapshot: no known users")
    if which == "all":
        return histories.most_active()
    count = which.removeprefix("top:")
    if not which.startswith("top:") or not count.isdigit() or int(count) < 1:
        raise ValueError(f"--users must be 'all' or 'top:N' with N >= 1, got {which!r}")
    return histories.most_active(int(count))


@dataclass(frozen=True)
class JobReport:
    users: int
    seconds: float  # from the first block submitted to the last Parquet file written
    actors: int  # processes that scored (host:pid)
    degraded: int  # lists computed degraded: in Parquet, not written to the tier
    out: str

    @property
    def users_per_s(self) -> float:
        return self.users / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "users_per_s": round(self.users_per_s, 1)}


def run_on_ray(spec: ScoringSpec, users: list[str], out: str, *, actors: int,
               batch_size: int) -> JobReport:
    """Score `users` on the connected Ray cluster with `actors` scorers and write Parquet under
    `out` (a path every node can write, or a URI such as s3://bucket/prefix), replacing what is
    there."""
    start = time.perf_counter()
    blocks = max(1, math.ceil(len(users) / batch_size))
    lists = ray.data.from_items([{"user_id": u} for u in users], override_num_blocks=blocks) \
        .map_batches(UserListScorer, fn_constructor_args=(spec,), batch_size=batch_size,
                     batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                     num_cpus=1) \
        .materialize()
    # One writer task at a time, on a sliver of a CPU: writing is I/O, and it must neither wait
    # for the CPUs the scorers hold nor start a worker process per block.
    lists.write_parquet(out, mode=ray.data.SaveMode.OVERWRITE, concurrency=1,
                        ray_remote_args={"num_cpus": WRITE_CPUS})
    seconds = time.perf_counter() - start
    # counted where the blocks are: only the counts travel to this process
    summaries = ray.get([ray.remote(block_summary).remote(block)
                         for block in lists.to_arrow_refs()])
    scorers = set().union(*(s for _, _, s in summaries))
    return JobReport(sum(n for n, _, _ in summaries), round(seconds, 3), len(scorers),
                     sum(d for _, d, _ in summaries), out)


def block_summary(block: pa.Table) -> tuple[int, int, set[str]]:
    """(lists, degraded lists, scorers) of one block of UserListScorer's output."""
    degraded = pc.sum(block.column("degraded").cast(pa.int64())).as_py() or 0
    return block.num_rows, degraded, set(block.column("scored_by").unique().to_pylist())
