"""The canary's judgements as a table and a plot: one row per judgement, a column per guard and
variant; no p99 where no answer was timed yet (a stage's warm-up), rather than a 0 ms."""
from __future__ import annotations

import math

from training import plots
from training.canary_report import plot_guards, verdict_frame


def verdict(at: float, stage: int, timed: tuple[int, int], p99: tuple[float, float]) -> dict:
    return {"at": at, "stage": stage, "share": 0.1 if stage == 0 else 1.0, "decision": "wait",
            "values": {"p99_ms": {"control": p99[0], "canary": p99[1]},
                       "timed": {"control": timed[0], "canary": timed[1]},
                       "error_rate": {"control": 0.0, "canary": 0.01}}}


def test_a_judgement_is_a_row_and_an_untimed_p99_is_missing() -> None:
    frame = verdict_frame([verdict(100.0, 0, (0, 0), (0.0, 0.0)),
                           verdict(101.5, 0, (40, 3), (12.0, 15.0)),
                           verdict(103.0, 1, (40, 0), (12.0, 0.0))])

    assert list(frame["seconds"]) == [0.0, 1.5, 3.0]
    assert math.isnan(frame.loc[0, "p99_ms.control"]) and math.isnan(frame.loc[2, "p99_ms.canary"])
    assert frame.loc[1, "p99_ms.canary"] == 15.0 and frame.loc[2, "p99_ms.control"] == 12.0
    assert frame.loc[1, "error_rate.canary"] == 0.01
    fig = plot_guards(frame, "test")
    assert len(fig.axes) == 4 and fig.axes[2].get_title() == "p99 latency (ms)"
    plots.close(fig)
