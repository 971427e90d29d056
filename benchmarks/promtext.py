"""Prometheus text from /metrics: samples, deltas between two scrapes, histogram summaries."""
from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
Labels = tuple[tuple[str, str], ...]


def parse(text: str) -> dict[tuple[str, Labels], float]:
    """{(metric name, sorted label pairs): value} for every sample line."""
    out: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        pairs = tuple(sorted(_LABEL.findall(labels or "")))
        try:
            out[(name, pairs)] = float(value)
        except ValueError:
            continue
    return out


def delta(before: str, after: str) -> dict[tuple[str, Labels], float]:
    """after - before for every sample present after (counters and histogram parts)."""
    old, new = parse(before), parse(after)
    return {key: value - old.get(key, 0.0) for key, value in new.items()}


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending
    total: float  # sum of observations
    count: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def quantile(self, q: float) -> float:
        """Prometheus histogram_quantile: linear inside the bucket that holds the q-th share."""
        if not self.count:
            return math.nan
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound
                width = cumulative - lower_count
                share = (rank - lower_count) / width if width else 1.0
                return lower_bound + (bound - lower_bound) * share
            lower_bound, lower_count = bound, cumulative
        return lower_bound


def histograms(samples: dict[tuple[str, Labels], float], name: str,
               by: str) -> dict[str, Histogram]:
    """Histograms of metric `name` grouped by the value of label `by` (other labels summed)."""
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for (metric, labels), value in samples.items():
        label = dict(labels)
        group = label.get(by, "")
        if metric == f"{name}_bucket":
            buckets[group][float(label["le"])] += value
        elif metric == f"{name}_sum":
            totals[group] += value
        elif metric == f"{name}_count":
            counts[group] += value
    return {group: Histogram(tuple(sorted(buckets[group].items())), totals[group], counts[group])
            for group in counts}
