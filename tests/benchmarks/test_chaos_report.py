"""The chaos suite's figures on hand-made samples: what counts as failed, degraded, lost, in
flight, and when quality counts as recovered (benchmarks/chaos_report.py)."""
from __future__ import annotations

from pathlib import Path

from benchmarks.chaos_load import Sample
from benchmarks.chaos_report import (
    Window,
    event_outcome,
    fault_result,
    in_flight_resets,
    phase_stats,
    recovery_s,
    relapses,
    table,
)

WINDOW = Window(0.0, 10.0, 20.0, 40.0)  # before 0-10 s, during 10-20 s, after 20-40 s


def ok(t: float, endpoint: str = "/recommend", **fields: object) -> Sample:
    return Sample(t, t + 0.01, endpoint, 200, **fields)  # type: ignore[arg-type]


def degraded(t: float) -> Sample:
    return ok(t, reasons=("history_unavailable",))


def refused(t: float, user: str = "u", ts: int = 0) -> Sample:
    return Sample(t, t + 0.01, "/events", 503, retry_after=True, user=user, event_ts=ts)


def test_an_event_refused_with_retry_after_is_not_a_failure_but_other_errors_are() -> None:
    samples = [ok(1.0), refused(2.0), Sample(3.0, 3.1, "/events", 503),  # no Retry-After
               Sample(4.0, 4.1, "/rank", 500), Sample(5.0, 5.1, "/recommend", 0, "ReadError")]

    stats = phase_stats(samples)

    assert (stats["sent"], stats["failed"], stats["refused_503"]) == (5, 3, 1)
    assert stats["failed_by"] == {"/events 503": 1, "/rank 500": 1, "/recommend ReadError": 1}


def test_recovery_is_the_first_moment_after_which_nothing_is_degraded_for_two_seconds() -> None:
    samples = [degraded(20.5), ok(21.0), degraded(22.0), ok(23.0), ok(24.5), ok(30.0)]

    assert recovery_s(samples, WINDOW) == 2.0  # from 22.0 s: nothing bad until the end


def test_a_later_episode_after_recovery_is_counted_apart() -> None:
    samples = [degraded(20.5), ok(21.0), ok(24.0), degraded(30.0), degraded(30.5), ok(31.0)]

    recovered = recovery_s(samples, WINDOW)

    assert recovered == 0.5 and relapses(samples, WINDOW, recovered) == 2


def test_recovery_is_zero_when_the_fault_leaves_nothing_behind() -> None:
    assert recovery_s([ok(20.5), ok(25.0)], WINDOW) == 0.0


def test_no_recovery_when_quality_never_holds_long_enough() -> None:
    samples = [degraded(t / 2) for t in range(40, 80)]  # every half second until the end

    assert recovery_s(samples, WINDOW) is None


def test_an_accepted_event_missing_from_the_history_is_lost() -> None:
    samples = [ok(1.0, "/events", user="a", event_ts=1), ok(2.0, "/events", user="b", event_ts=2),
               refused(3.0, "c", 3), refused(4.0, "d", 4)]
    stored = {("a", 1), ("d", 4)}

    outcome = event_outcome(samples, stored)

    assert outcome == {"sent": 4, "accepted": 2, "refused_503": 2, "failed": 0, "lost": 1,
                       "refused_but_stored": 1}


def test_connection_errors_right_after_a_kill_are_counted_as_in_flight() -> None:
    samples = [Sample(9.9, 10.2, "/recommend", 0, "RemoteProtocolError"),
               Sample(10.1, 10.3, "/rank", 0, "ReadError"),
               Sample(14.0, 14.1, "/recommend", 0, "ReadError"),  # later: not the kill's
               Sample(9.9, 10.2, "/recommend", 500)]

    assert in_flight_resets(samples, WINDOW) == 2


def test_a_fault_result_has_phases_a_plot_and_a_table_row(tmp_path: Path) -> None:
    samples = [ok(t / 4) for t in range(160)] + [degraded(12.0)]

    result = fault_result("demo", "what it does", samples, WINDOW, set(), {}, tmp_path)
    result["restored"] = {"ok": True}

    assert [result["phases"][p]["sent"] for p in ("before", "during", "after")] == [40, 41, 80]
    assert result["phases"]["during"]["degraded_by"] == {"history_unavailable": 1}
    assert (tmp_path / result["plot"]).is_file()
    assert "| demo | 161 | 0 | 1 |" in table([result])
