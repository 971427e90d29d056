"""Markdown cells and the load-curve table shared by the benchmark report's sections."""
from __future__ import annotations

from typing import Any


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(share: float | None) -> str:
    return "–" if share is None else f"{100 * share:.0f}%"


def curve_rows(curves: dict[str, dict[int, dict[str, Any]]], batching: bool = False) -> list[str]:
    head = ("| target | c | req/s (median) | p50 | p95 | p99 ms | server p50 / p99 ms | non-2xx / degraded | "
            "hit rate | server CPU ms/req | client / server / other cores |")
    if batching:
        head = head.replace("hit rate", "requests/batch (ranker, tower) | 503s | ranker fallbacks")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for target, curve in curves.items():
        for c, p in sorted(curve.items()):
            mid = fmt(p["hit_rate"])
            if batching:
                b = p["mean_batch_rows"]
                falls = sum(v for k, v in p["fallbacks"].items() if k.startswith("ranker"))
                mid = (f"{fmt(b.get('score_champion'), 1)}, {fmt(b.get('encode_champion'), 1)} | "
                       f"{p['model_503']} | {falls}")
            rows.append(
                f"| {target} | {c} | {fmt(p['rps'], 1)} | {fmt(p['p50_ms'])} | {fmt(p['p95_ms'])} "
                f"| {fmt(p['p99_ms'])} | {fmt(p['server_p50_ms'])} / {fmt(p['server_p99_ms'])} "
                f"| {p['non_2xx']} / {pct(p.get('degraded_share'))} | {mid} "
                f"| {fmt(p['server_cpu_ms_per_request'])} "
                f"| {fmt(p['client_cores'])} / "
                f"{fmt(p['server_cores'])} / {fmt(p['other_cores'])} |")
    return rows
