"""The chaos suite's figures on hand-made samples: what counts as failed, degraded, lost, in
flight, and when quality counts as recovered (benchmarks/chaos_report.py)."""
from __future__ import annotations

from pathlib import Path

from benchmarks.chaos_load import Sample, versions_key
from benchmarks.chaos_report import (
    Window,
    event_outcome,
    fault_result,
    in_flight_resets,
    model_switch,
    phase_stats,
    recovery_s,
    relapses,
    table,
)

WINDOW = Window(0.0, 10.0, 20.0, 40.0)  # before 0-10 s, during 10-20 s, after 20-40 s
OLD = versions_key({"embedding": "e:v1-aa", "ranker": "r:v1-bb", "fallback_ranker": "f:v1-cc"})
NEW = versions_key({"embedding": "e:v2-dd", "ranker": "r:v2-ee", "fallback_ranker": "f:v2-ff"})


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


def test_versions_are_read_in_kind_order() -> None:
    assert versions_key({"ranker": "r", "embedding": "e", "fallback_ranker": "f"}) == \
        ("e", "f", "r")


def test_a_change_of_models_recovers_with_the_last_answer_from_the_old_ones() -> None:
    """Timed from the alias move (the fault's beginning): worker 1 swapped at 12 s, worker 2 at
    16.5 s; an event names no models and counts for nothing either way."""
    samples = [ok(t / 4, versions=OLD) for t in range(40, 48)]  # 10-12 s: both old
    samples += [ok(12.0 + t / 2, versions=(OLD if t % 2 else NEW)) for t in range(9)]  # to 16 s
    samples += [ok(16.5, versions=OLD), ok(16.6, "/events")]
    samples += [ok(17.0 + t / 4, versions=NEW) for t in range(80)]

    assert recovery_s(samples, WINDOW) == 0.0  # by quality alone: nothing was degraded
    assert recovery_s(samples, WINDOW, versions=NEW) == 6.5
    assert model_switch(samples, WINDOW, NEW) == {
        "first_new_s": 2.0, "last_old_s": 6.5, "sets_answering": 2,
        "old_answers": {"during": 13, "after": 0}}


def test_an_old_answer_after_a_change_of_models_recovered_is_a_relapse() -> None:
    samples = [ok(10.5, versions=OLD), ok(11.0, versions=NEW), ok(14.0, versions=NEW),
               ok(30.0, versions=OLD)]

    recovered = recovery_s(samples, WINDOW, versions=NEW)

    assert recovered == 20.0  # the old answer at 30 s is the last one: recovery waits for it
    assert relapses(samples, WINDOW, 1.0, NEW) == 1


def test_a_change_of_models_that_never_arrives_never_recovers() -> None:
    samples = [ok(10 + t / 4, versions=OLD) for t in range(120)]

    assert recovery_s(samples, WINDOW, versions=NEW) is None


def test_a_change_of_models_is_reported_with_its_switch_and_marked_in_the_table(
        tmp_path: Path) -> None:
    samples = [ok(t / 4, versions=OLD) for t in range(44)] + \
        [ok(11.0 + t / 4, versions=NEW) for t in range(116)]

    result = fault_result("promotion", "alias moved", samples, WINDOW, set(), {}, tmp_path, NEW)
    result["restored"] = {"ok": True}

    assert result["recovery_s"] == 0.75 and result["recovery_from"] == "begin"  # last old one
    assert result["models"]["first_new_s"] == 1.0 and result["models"]["last_old_s"] == 0.75
    assert result["timeline"]["new_share"][0] == 0.0 and result["timeline"]["new_share"][-1] == 1
    assert "| promotion | 160 | 0 | 0 | 0 / 0 / 0 | 0.75 s* |" in table([result])
