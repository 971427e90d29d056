"""The report's figures (matplotlib, Agg): latency and throughput vs concurrency, latency vs size."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Curves = dict[str, dict[int, dict[str, Any]]]


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def latency_vs_concurrency(curves: Curves, path: Path, title: str) -> str:
    """p50 (solid) and p99 (dashed) client latency per target, log-log."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for n, (target, curve) in enumerate(sorted(curves.items())):
        xs = sorted(curve)
        color = f"C{n}"
        ax.plot(xs, [curve[c]["p50_ms"] for c in xs], "o-", color=color, label=f"{target} p50")
        ax.plot(xs, [curve[c]["p99_ms"] for c in xs], "s--", color=color, label=f"{target} p99")
    ax.set(xscale="log", yscale="log", xlabel="concurrent connections (wrk -c)",
           ylabel="client latency (ms)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def throughput_vs_concurrency(curves: Curves, path: Path, title: str) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for n, (target, curve) in enumerate(sorted(curves.items())):
        xs = sorted(curve)
        ax.plot(xs, [curve[c]["rps"] for c in xs], "o-", color=f"C{n}", label=target)
    ax.set(xscale="log", xlabel="concurrent connections (wrk -c)", ylabel="requests/s (median)",
           title=title)
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency_vs_size(scale: dict[str, Any], path: Path) -> str:
    """Retrieval (index search, top-1000) and end-to-end server-side latency per catalogue size."""
    sizes = sorted(int(s) for s in scale)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    series = {
        "retrieval top-1000 p50": [scale[str(s)]["index"]["latency_top1000_ms"]["p50"] for s in sizes],
        "retrieval top-1000 p99": [scale[str(s)]["index"]["latency_top1000_ms"]["p99"] for s in sizes],
    }
    for topology in ("inline", "services"):
        if all(topology in scale[str(s)] for s in sizes):
            for p in ("p50", "p99"):
                series[f"e2e server {p} ({topology})"] = [
                    scale[str(s)][topology]["c1"]["server_latency_ms"].get(p) for s in sizes]
    for n, (name, ys) in enumerate(series.items()):
        style = "s--" if "p99" in name else "o-"
        ax.plot(sizes, ys, style, color=f"C{n // 2}", label=name)
    ax.set(xscale="log", yscale="log", xlabel="catalogue items", ylabel="latency (ms), one at a time",
           title="Latency vs catalogue size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def batch_size_vs_concurrency(variants: Curves, path: Path) -> str:
    """Mean requests per adaptive batch, per model endpoint and batching variant."""
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    n = 0
    for variant, curve in sorted(variants.items()):
        xs = sorted(curve)
        endpoints = sorted({e for c in xs for e in curve[c]["mean_batch_rows"]})
        for endpoint in endpoints:
            ax.plot(xs, [curve[c]["mean_batch_rows"].get(endpoint) for c in xs], "o-",
                    color=f"C{n}", label=f"{variant}: {endpoint}")
            n += 1
    ax.set(xscale="log", xlabel="concurrent connections", ylabel="requests per batch (mean)",
           title="Adaptive batching: batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def throughput_vs_replicas(rows: dict[str, dict[str, Any]], path: Path, fixed_c: int,
                           slo_ms: float) -> str:
    """req/s by replica count, per balance mode: at a fixed concurrency and at the p99 SLO;
    rows with via "direct" (one replica without the load balancer) as single points."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    direct = [r for r in rows.values() if r["via"] == "direct"]
    balanced = [r for r in rows.values() if r["via"] != "direct"]
    modes = sorted({row["balance"] for row in balanced})
    for n, mode in enumerate(modes):
        mine = sorted((r for r in balanced if r["balance"] == mode), key=lambda r: r["replicas"])
        xs = [r["replicas"] for r in mine]
        ax.plot(xs, [r["fixed"]["rps"] for r in mine], "o-", color=f"C{n}",
                label=f"{mode}: c={fixed_c}")
        ax.plot(xs, [(r["slo"] or {}).get("rps") for r in mine], "s--", color=f"C{n}",
                label=f"{mode}: best with p99 ≤ {slo_ms:g} ms")
    for r in direct:  # one replica without HAProxy: what the load balancer costs
        ax.plot([r["replicas"]], [r["fixed"]["rps"]], "*", color="k", markersize=10,
                label=f"direct, no HAProxy: c={fixed_c}")
    ax.set(xlabel="replicas (one API worker each)", ylabel="requests/s (median)",
           title="Cache misses through HAProxy by replica count")
    ax.set_xticks(sorted({r["replicas"] for r in rows.values()}))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
