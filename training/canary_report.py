"""A canary release watched from a notebook: replayed traffic while the canary runs, its
judgements as a table, and the guards per variant over time as plots."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from registry.admin_client import AdminClient
from training.replay import Interaction, ReplayReport, replay

GUARDS = (("error_rate", "error rate"), ("degraded_rate", "degraded rate"),
          ("p99_ms", "p99 latency (ms)"), ("ctr", "click-through"))


@dataclass
class CanaryRun:
    status: dict[str, Any]  # the canary's last status (admin endpoint)
    replay: ReplayReport
    seconds: float


def run_with_traffic(admin: AdminClient, url: str, interactions: list[Interaction], *,
                     rate: float, count: int, timeout_s: float,
                     on_status: Callable[[dict[str, Any]], None] | None = None) -> CanaryRun:
    """Replay `interactions` against `url` (127.0.0.1) while polling the running canary; the
    replay stops when the canary ends, after `count` requests or after `timeout_s`."""
    ended = threading.Event()
    outcome: dict[str, ReplayReport] = {}

    def traffic() -> None:
        outcome["report"] = asyncio.run(replay(url, interactions, rate=rate, count=count,
                                               stop=ended.is_set))

    started = time.monotonic()
    sender = threading.Thread(target=traffic, name="replay", daemon=True)
    sender.start()
    try:
        status = admin.watch(timeout_s=timeout_s, every_s=1.0, on_status=on_status)
    finally:
        ended.set()
        sender.join()
    return CanaryRun(status, outcome["report"], round(time.monotonic() - started, 1))


def verdict_frame(verdicts: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per judgement: time since the first, stage, share, decision and each guard's
    value per variant (columns "<guard>.<variant>")."""
    rows = []
    for verdict in verdicts:
        row = {"at": verdict["at"], "stage": verdict["stage"], "share": verdict["share"],
               "decision": verdict["decision"]}
        for guard, by_variant in verdict["values"].items():
            for variant, value in by_variant.items():
                row[f"{guard}.{variant}"] = value
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["seconds"] = frame["at"] - frame["at"].iloc[0]
    for variant in ("control", "canary"):  # no answer timed yet (a stage's warm-up): no p99
        if f"timed.{variant}" in frame and f"p99_ms.{variant}" in frame:
            frame[f"p99_ms.{variant}"] = frame[f"p99_ms.{variant}"].where(
                frame[f"timed.{variant}"] > 0)
    return frame


def plot_guards(frame: pd.DataFrame, title: str = "canary guards") -> Figure:
    """Each guard of the stage under way, champion (control) against challenger (canary), over
    the canary's time; the stages shaded with the challenger's share of users."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 6), sharex=True)
    for ax, (guard, label) in zip(axes.flat, GUARDS):
        for variant, style in (("control", "-"), ("canary", "--")):
            column = f"{guard}.{variant}"
            if column in frame:
                ax.plot(frame["seconds"], frame[column], style, label=variant)
        starts = frame.groupby("stage")["seconds"].min().sort_index()
        ends = [*starts.iloc[1:], frame["seconds"].max()]  # a stage lasts until the next one
        shares = frame.groupby("stage")["share"].first()
        for (stage, start), end in zip(starts.items(), ends):
            ax.axvspan(start, end, alpha=0.08 + 0.25 * float(shares[stage]), color="tab:orange",
                       linewidth=0)
        ax.set(title=label, xlabel="seconds since the first judgement")
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.suptitle(f"{title} (shading: the challenger's share of users in each stage)")
    fig.tight_layout()
    return fig
