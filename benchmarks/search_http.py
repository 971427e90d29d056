"""The suite's search phase: POST /search over HTTP beside /recommend, cache misses one at a time
and at the suite's concurrencies, against the no-op floor's /search; then the search index's build
time and memory at each catalogue size of the run (benchmarks/search_build.py, a child each).

Every measured request is a new cache key. The bodies file holds distinct (normalised query,
user) pairs, a quarter each: 1-3 words of a title and the same with one typo (both without a
user), title words asked by a known user, and a genre name asked by a known user (the windows
and typos of training/search_queries.py, as benchmarks/search.py draws them). recommend.lua
sends line n mod B with the page size added, and the warm-up runs ask for another page size, so
they never fill the measured run's keys. A genre alone without a user is left out: a catalogue
has a dozen genres, so those queries would be cache hits.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import servers
from benchmarks.models import BenchModels
from benchmarks.phases import Session, load_spec, measured_run, running
from benchmarks.search import build_table, measure_build
from benchmarks.tables import curve_rows, fmt
from recsys.features import ItemCatalog
from recsys.models import artifacts
from recsys.search.text import normalise
from training.search_queries import title_window, with_typo

KINDS = ("title", "title_typo", "title_user", "genre_user")
TARGETS = ("search-miss", "noop-search")
PAGE_SIZE = 10


class QueryDraws:
    """Seeded draws of each kind of query; a genre asked by a user comes from a shuffled list of
    every (genre, user) pair, so it runs out instead of repeating."""

    def __init__(self, catalog: ItemCatalog, users: list[str], seed: int) -> None:
        self.catalog, self.users = catalog, users
        self.rng = np.random.default_rng(seed)
        self.pairs = iter(self.rng.permutation(len(catalog.genre_vocab) * len(users)).tolist())

    def draw(self, kind: str) -> tuple[str, str | None] | None:
        """(query, user id or None); None when the kind has no pair left."""
        if kind == "genre_user":
            pair = next(self.pairs, None)
            if pair is None:
                return None
            genre, user = divmod(pair, len(self.users))
            return self.catalog.genre_vocab[genre].lower(), self.users[user]
        row = int(self.rng.integers(1, self.catalog.size + 1))
        window = title_window(str(self.catalog.titles[row]), self.rng)
        words = with_typo(window, self.rng) if kind == "title_typo" else window
        user = self.users[int(self.rng.integers(len(self.users)))] if kind == "title_user" \
            else None
        return " ".join(words), user


def search_bodies(catalog: ItemCatalog, users: list[str], count: int,
                  seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """Up to `count` /search bodies (JSON, one a line, without a page size) no two of which
    share a cache key, the kinds in turn; and how many of each kind. Fewer when the catalogue
    runs out of distinct queries (a draw that repeats a key 50 times in a row ends it)."""
    draws = QueryDraws(catalog, users, seed)
    seen: set[tuple[str, str | None]] = set()
    lines: list[str] = []
    counts = dict.fromkeys(KINDS, 0)
    repeats = 0
    turn = 0
    while len(lines) < count and repeats < 50:
        kind = KINDS[turn % len(KINDS)]
        turn += 1
        drawn = draws.draw(kind)
        key = None if drawn is None else (normalise(drawn[0]), drawn[1])
        if drawn is None or not key or not key[0] or key in seen:
            repeats += 1
            continue
        repeats = 0
        seen.add(key)
        counts[kind] += 1
        body = {"query": drawn[0]} | ({"user_id": drawn[1]} if drawn[1] else {})
        lines.append(json.dumps(body, separators=(",", ":")))
    return lines, counts


def write_bodies(session: Session, models: BenchModels) -> tuple[Path, dict[str, int]]:
    path = session.out / f"search-bodies-{models.n_items}.jsonl"
    catalog = artifacts.load_catalog(models.workdir / "embedding")
    lines, counts = search_bodies(catalog, models.user_ids(), session.settings.search_bodies)
    path.write_text("\n".join(lines) + "\n")
    return path, counts


def search(session: Session, models: BenchModels,
           all_models: dict[int, BenchModels]) -> dict[str, Any]:
    """The service's /search over `models` (inline topology, its own Redis, the suite's API
    workers) and the no-op floor's, started together, repeats interleaved across the two at each
    concurrency; then the index built from each set of `all_models`' catalogue."""
    s = session.settings
    users = session.users_file(models)
    bodies, kinds = write_bodies(session, models)
    redis = servers.redis(session.logs / "redis-search").start()
    service = servers.recommender(models, redis, session.logs / "service-search.log",
                                  workers=s.workers, suffix="-search")
    floor = servers.noop(session.logs / "noop-search.log", workers=s.workers)
    runs: list[dict[str, Any]] = []
    try:
        with running(service, floor) as sampler:
            startup = {x.name: x.startup_s for x in (service, floor)}
            session.log(f"search on {models.n_items:,} items, {sum(kinds.values()):,} distinct "
                        f"bodies {kinds}; start-up s: {startup}")
            for repeat in range(s.repeats):
                session.log(f" repeat {repeat + 1}/{s.repeats}")
                for c in s.concurrencies:
                    for target, server in zip(TARGETS, (service, floor)):
                        spec = load_spec(session, target, server, users, c, path="/search",
                                         bodies_file=bodies, k_field="page_size", k=PAGE_SIZE)
                        result = measured_run(session, target, server, spec, {"repeat": repeat})
                        runs.append(result.as_dict())
            rss = sampler.stop()
    finally:
        redis.stop()
    return {"n_items": models.n_items, "runs": runs, "startup_s": startup, "peak_rss_mb": rss,
            "workers": s.workers, "bodies": sum(kinds.values()), "kinds": kinds,
            **index_builds(session, all_models)}


def index_builds(session: Session, all_models: dict[int, BenchModels]) -> dict[str, Any]:
    """{"builds": [...]} and {"build_errors": {size: message}} for the sizes that failed."""
    out = session.logs / "search-build"
    out.mkdir(parents=True, exist_ok=True)
    builds, errors = [], {}
    for size, models in sorted(all_models.items()):
        try:
            build = measure_build(size, models.workdir / "embedding", out)
        except (subprocess.SubprocessError, OSError) as error:
            errors[str(size)] = f"{type(error).__name__}: {error} (log: {out}/build-{size}.log)"
            session.log(f" search index {size:,} items failed: {errors[str(size)]}")
            continue
        builds.append(build)
        session.log(f" search index {size:,} items: build {build['build_s']} s, RSS "
                    f"+{build['rss_growth_mib']} MiB")
    return {"builds": builds, "build_errors": errors}


def section(search: dict[str, Any] | None, derived: dict[str, Any],
            figures: dict[str, str]) -> list[str]:
    """The report's /search section (empty when the phase did not run)."""
    if not search or not derived.get("curves"):
        return []
    ratios = derived["ratios"]
    lines = ["", f"## /search beside /recommend ({search['n_items']:,} items)", "",
             (f"Cache misses: {search['bodies']:,} distinct bodies "
              f"({', '.join(f'{k} {v:,}' for k, v in search['kinds'].items())}), page size "
              f"{PAGE_SIZE}; the service (inline, {search['workers']} API worker(s), its own "
              "Redis) and the no-op floor's /search started together. Latency as above: "
              "client side, and server side from each answer's `latency_ms`."), ""]
    lines += curve_rows({t: derived["curves"][t] for t in TARGETS if t in derived["curves"]})
    per = ", ".join(f"c={c}: {fmt(v)}" for c, v in ratios["by_concurrency"].items())
    at_slo = ratios["at_slo"]
    lines += ["", "| ratio | at each concurrency | best within p99 SLO | peak |",
              "|---|---|---|---|",
              (f"| /search miss / no-op /search (req/s) | {per} | "
               f"{fmt(at_slo['miss_over_noop'])} | {fmt(ratios['at_peak']['miss_over_noop'])} |"),
              "",
              (f"SLO for 'best within': client p99 ≤ {at_slo['slo_p99_ms']:g} ms, no errors; "
               f"req/s at it: {at_slo['rps']} (connections {at_slo['connections']})."), ""]
    cost = ratios.get("cpu_per_request")
    if cost:
        lines += [(f"Server CPU per request at c={cost['connections']}: "
                   f"{cost['server_cpu_ms']} ms (/search miss / no-op "
                   f"{fmt(cost['miss_over_noop'])}x)."), ""]
    stages = (derived["curves"].get("search-miss", {}).get(1) or {}).get("stages", {})
    if stages:
        lines += ["Server stages, one at a time (`recsys_stage_seconds`):", "",
                  "| stage | mean ms | p50 ms | p99 ms |", "|---|---|---|---|"]
        lines += [f"| {name} | {v['mean_ms']} | {v['p50_ms']} | {v['p99_ms']} |"
                  for name, v in sorted(stages.items())]
        lines.append("")
    for key, alt in (("search_latency", "search latency"), ("search_throughput",
                                                            "search throughput")):
        if key in figures:
            lines += [f"![{alt}]({figures[key]})", ""]
    if search.get("builds"):
        lines += ["### Search index per catalogue size", "",
                  ("Built from each model set's catalogue in a child process "
                   "(benchmarks/search_build.py): build time, RSS growth, the index's arrays, and "
                   "parse + BM25 one query at a time."), "", *build_table(search["builds"]), ""]
    lines += [f"- index build {size} failed: `{error}`"
              for size, error in search.get("build_errors", {}).items()]
    return lines


def notes(derived: dict[str, Any]) -> list[str]:
    """What the report's caveats should say about the search runs."""
    out = []
    for c, p in sorted(derived.get("curves", {}).get("search-miss", {}).items()):
        if p.get("hit_rate"):
            out.append(f"search-miss c={c}: {100 * p['hit_rate']:.1f}% of answers were cache hits "
                       "(the bodies file ran out of distinct keys: raise search_bodies).")
        if (p.get("degraded_share") or 0) > 0.05:
            out.append(f"search-miss c={c}: {100 * p['degraded_share']:.0f}% of answers degraded "
                       "(a retriever or the personalisation ran out of time).")
    return out
