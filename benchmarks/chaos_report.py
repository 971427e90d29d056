"""The chaos suite's figures from the load's samples: per phase (before, during, after a fault)
requests sent, failed, degraded by reason and latency; the time to recover full quality; what
became of the events; a timeline plot per fault; report.json and report.md."""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from benchmarks.chaos_load import Sample

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt

RECOVERY_WINDOW_S = 2.0  # recovered: no degraded, refused or failed answer for this long
IN_FLIGHT_S = 1.0  # a connection error this soon after a fault began: the request was in flight
Versions = tuple[str, ...] | None  # the model tags every answer carries once a change is done


@dataclass(frozen=True)
class Window:
    """A fault's phases in time.monotonic() seconds: before [t0, t1), during [t1, t2), after
    [t2, t3)."""

    t0: float
    t1: float
    t2: float
    t3: float

    def phase(self, samples: Sequence[Sample], name: str) -> list[Sample]:
        start, end = {"before": (self.t0, self.t1), "during": (self.t1, self.t2),
                      "after": (self.t2, self.t3), "all": (self.t0, self.t3)}[name]
        return [s for s in samples if start <= s.start < end]


def bad(sample: Sample) -> bool:
    """Not full quality: failed, refused (503 to an event) or degraded."""
    return not sample.ok or sample.degraded


def phase_stats(samples: Sequence[Sample]) -> dict[str, Any]:
    """sent, failed (by status or transport error), degraded (by reason), refused events,
    p50/p99 of the answered requests (ms) and requests per second."""
    answered = np.asarray([s.latency_ms for s in samples if s.status], dtype=np.float64)
    failed = Counter(f"{s.endpoint} {s.status or s.error}" for s in samples if s.failed)
    reasons = Counter(r for s in samples for r in s.reasons)
    span = (max(s.start for s in samples) - min(s.start for s in samples)) if samples else 0.0
    return {
        "sent": len(samples), "failed": sum(failed.values()), "failed_by": dict(failed),
        "degraded": sum(1 for s in samples if s.degraded), "degraded_by": dict(reasons),
        "refused_503": sum(1 for s in samples if s.refused),
        "p50_ms": round(float(np.percentile(answered, 50)), 1) if answered.size else None,
        "p99_ms": round(float(np.percentile(answered, 99)), 1) if answered.size else None,
        "rps": round(len(samples) / span, 1) if span else None,
        "by_endpoint": dict(Counter(s.endpoint for s in samples)),
    }


def stale(sample: Sample, versions: Versions) -> bool:
    """An answer from other models than `versions` (None: no change of models expected)."""
    return versions is not None and bool(sample.versions) and sample.versions != versions


def recovery_start(window: Window, versions: Versions) -> float:
    """Where recovery is timed from: the fault's end, or for a change of models (a promotion, a
    rollback: instant, held only to watch it) its beginning, when the alias moved."""
    return window.t1 if versions is not None else window.t2


def recovery_s(samples: Sequence[Sample], window: Window, hold_s: float = RECOVERY_WINDOW_S,
               versions: Versions = None) -> float | None:
    """Seconds from the fault's end to the first moment after which no request sent within
    hold_s was degraded, refused or failed; None if the after phase never held that long. With
    `versions` (what every answer carries once a change of models is done), timed from the
    fault's beginning, and no earlier than the last answer from other models."""
    since = recovery_start(window, versions)
    later = sorted((s for s in samples if since <= s.start < window.t3), key=lambda s: s.start)
    bad_starts = [s.start for s in later if bad(s) or stale(s, versions)]
    last_old = max((s.start for s in later if stale(s, versions)), default=since)
    for moment in [since] + bad_starts:
        if moment < last_old:
            continue
        if moment + hold_s > window.t3:
            return None
        if not any(moment < t <= moment + hold_s for t in bad_starts):
            return round(moment - since, 2)
    return None


def relapses(samples: Sequence[Sample], window: Window, recovered_s: float | None,
             versions: Versions = None) -> int:
    """Requests not at full quality (or, after a change of models, from the old ones) sent after
    the recovery point (a later episode, e.g. a breaker tripped again by a stall), or 0 when
    there was no recovery to relapse from."""
    if recovered_s is None:
        return 0
    since = recovery_start(window, versions) + recovered_s + RECOVERY_WINDOW_S
    return sum(1 for s in window.phase(samples, "all")
               if s.start > since and (bad(s) or stale(s, versions)))


def model_switch(samples: Sequence[Sample], window: Window,
                 versions: tuple[str, ...]) -> dict[str, Any]:
    """How answers moved to `versions`, in seconds from the fault's beginning: the first answer
    from them, the last from other models, how many model sets answered from the beginning on
    (2: the old and the new, each whole) and answers from other models per phase."""
    answers = [s for s in window.phase(samples, "all") if s.start >= window.t1 and s.versions]
    new = [s.start - window.t1 for s in answers if s.versions == versions]
    old = [s.start - window.t1 for s in answers if s.versions != versions]
    return {"first_new_s": round(min(new), 2) if new else None,
            "last_old_s": round(max(old), 2) if old else None,
            "sets_answering": len({s.versions for s in answers}),
            "old_answers": {p: sum(1 for s in window.phase(samples, p) if stale(s, versions))
                            for p in ("during", "after")}}


def in_flight_resets(samples: Sequence[Sample], window: Window) -> int:
    """Failed requests whose connection broke within IN_FLIGHT_S of the fault's start: sent
    to a process as it was killed (nothing on the server's side can answer those)."""
    return sum(1 for s in window.phase(samples, "all")
               if s.failed and s.status == 0 and window.t1 <= s.end <= window.t1 + IN_FLIGHT_S)


def event_outcome(samples: Sequence[Sample], stored: set[tuple[str, int]]) -> dict[str, int]:
    """accepted (2xx), refused (503 + Retry-After), failed otherwise, lost (accepted, not in
    the history), and refused_but_stored (a client that retries it records it twice)."""
    events = [s for s in samples if s.endpoint == "/events"]
    accepted = [s for s in events if s.ok]
    refused = [s for s in events if s.refused]
    return {"sent": len(events), "accepted": len(accepted), "refused_503": len(refused),
            "failed": sum(1 for s in events if s.failed),
            "lost": sum(1 for s in accepted if (s.user, s.event_ts) not in stored),
            "refused_but_stored": sum(1 for s in refused if (s.user, s.event_ts) in stored)}


def timeline(samples: Sequence[Sample], window: Window, bin_s: float = 1.0,
             versions: Versions = None) -> dict[str, list]:
    """Per bin of sending time: requests/s, p99 (ms), the share not at full quality, and with
    `versions` the share of answers naming models that came from those."""
    edges = [*np.arange(window.t0, window.t3, bin_s), window.t3]
    out: dict[str, list] = {"t": [], "rps": [], "p99_ms": [], "bad_share": []}
    if versions is not None:
        out["new_share"] = []
    chosen = window.phase(samples, "all")
    for start, end in itertools.pairwise(edges):
        if end - start < bin_s / 4:
            continue  # a sliver at the end: too few requests to plot
        in_bin = [s for s in chosen if start <= s.start < end]
        latencies = [s.latency_ms for s in in_bin if s.status]
        out["t"].append(round(float(start - window.t1), 2))
        out["rps"].append(round(len(in_bin) / (end - start), 1))
        out["p99_ms"].append(float(np.percentile(latencies, 99)) if latencies else None)
        out["bad_share"].append(sum(bad(s) for s in in_bin) / len(in_bin) if in_bin else None)
        if versions is not None:
            named = [s for s in in_bin if s.versions]
            out["new_share"].append(sum(s.versions == versions for s in named) / len(named)
                                    if named else None)
    return out


def plot_timeline(name: str, series: dict[str, list], fault_s: float, path: Path) -> str:
    fig, axes = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True)
    t = series["t"]
    for ax, key, label in zip(axes, ("rps", "p99_ms", "bad_share"),
                              ("requests/s", "p99 (ms)", "not full quality")):
        values = [np.nan if v is None else v for v in series[key]]
        ax.plot(t, values, "-", drawstyle="steps-post", color="C0", label=label)
        ax.axvspan(0, fault_s, color="C3", alpha=0.15, label="fault")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[1].set_yscale("log")
    axes[2].set_ylim(-0.02, 1.02)
    if "new_share" in series:
        axes[2].plot(t, [np.nan if v is None else v for v in series["new_share"]], "-",
                     drawstyle="steps-post", color="C2", label="from the new models")
        axes[2].legend(fontsize=8, loc="center right")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("seconds since the fault began (1 s bins, by sending time); not full "
                        "quality = degraded, refused or failed")
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def fault_result(name: str, description: str, samples: Sequence[Sample], window: Window,
                 stored: set[tuple[str, int]], notes: dict[str, Any], out: Path,
                 versions: Versions = None) -> dict[str, Any]:
    """The figures of one fault; `versions`: for a change of models, the tags every answer
    carries once it is done (recovery then waits for the last answer from other models)."""
    series = timeline(samples, window, versions=versions)
    result = {
        "fault": name, "description": description, "notes": notes,
        "seconds": {"before": round(window.t1 - window.t0, 2),
                    "during": round(window.t2 - window.t1, 2),
                    "after": round(window.t3 - window.t2, 2)},
        "phases": {p: phase_stats(window.phase(samples, p))
                   for p in ("before", "during", "after", "all")},
        "recovery_s": (recovered := recovery_s(samples, window, versions=versions)),
        "recovery_from": "begin" if versions is not None else "end",
        "bad_after_recovery": relapses(samples, window, recovered, versions),
        "failed_in_flight": in_flight_resets(samples, window),
        "events": event_outcome(window.phase(samples, "all"), stored),
        "plot": plot_timeline(name, series, window.t2 - window.t1, out / f"{name}.png"),
        "timeline": series,
    }
    if versions is not None:
        result["models"] = model_switch(samples, window, versions)
    return result


def _cell(value: Any, unit: str = "") -> str:
    return "—" if value is None else f"{value:,}{unit}" if isinstance(value, int) \
        else f"{value:g}{unit}"


def _reasons(counts: dict[str, int]) -> str:
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{reason} {n:,}" for reason, n in top) or "—"


def _recovery(result: dict[str, Any]) -> str:
    """A change of models is timed from its beginning (the alias moved): marked with "*"."""
    cell = _cell(result["recovery_s"], " s")
    return cell + "*" if result.get("recovery_from") == "begin" and result["recovery_s"] \
        is not None else cell


def table(results: Sequence[dict[str, Any]]) -> str:
    """The README's table: one row per fault, the whole window (before + during + after)."""
    rows = [("| fault | sent | failed | degraded | events accepted / refused 503 / lost | "
            "recovery | p99 before / during / after (ms) |"),
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        every, events = r["phases"]["all"], r["events"]
        p99 = " / ".join(_cell(r["phases"][p]["p99_ms"]) for p in ("before", "during", "after"))
        failed = f"{every['failed']:,}" + (f" ({r['failed_in_flight']:,} in flight)"
                                           if r["failed_in_flight"] else "")
        rows.append(f"| {r['fault']} | {every['sent']:,} | {failed} | "
                    f"{every['degraded']:,} | {events['accepted']:,} / {events['refused_503']:,}"
                    f" / {events['lost']:,} | {_recovery(r)} | {p99} |")
    return "\n".join(rows)


def write_samples(path: Path, samples: Sequence[Sample], origin: float) -> None:
    """Every request as one JSON line, times in seconds since `origin` (for a closer look)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for s in samples:
            out.write(json.dumps({**asdict(s), "start": round(s.start - origin, 4),
                                  "end": round(s.end - origin, 4)}) + "\n")


def _models_line(result: dict[str, Any]) -> list[str]:
    models = result.get("models")
    if models is None:
        return []
    old = models["old_answers"]
    line = (f"Models: the first answer from the new set {_cell(models['first_new_s'], ' s')} and "
            f"the last from the old one {_cell(models['last_old_s'], ' s')} after the alias "
            f"moved; answers from the old set {old['during']:,} during, {old['after']:,} after.")
    return [line]


def write(out: Path, report: dict[str, Any]) -> Path:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    meta = report["meta"]
    lines = [f"# Chaos run {meta['started']}", "",
             f"Load: {meta['load']}. Server: {meta['server']}. Redis: {meta['redis']}.",
             (f"Machine: {meta['cores']} cores, load average {meta['load_average_start']} at the "
             f"start and {meta['load_average_end']} at the end. Run took {meta['duration_s']} s."),
             "", table(report["faults"]), "",
             (f"Every accepted event of the run found in Redis afterwards: "
             f"{report['events_total']['accepted'] - report['events_total']['lost']:,} of "
             f"{report['events_total']['accepted']:,} (lost {report['events_total']['lost']})."),
             "", ("Failed: non-2xx answers other than an event's 503 with Retry-After, and "
             "connection errors; \"in flight\": connection errors within "
             f"{IN_FLIGHT_S:g} s of the fault's start, requests a killed process held. Degraded: 2xx answers with degraded_reasons (and events whose "
             "cache invalidation failed). Recovery: from the fault's end to the first moment "
             f"after which no request was degraded, refused or failed for {RECOVERY_WINDOW_S:g} s"
             " (— : not within the after phase); \"*\": a change of models (promotion, "
             "rollback), timed from its beginning, when the alias moved, and no earlier than the "
             "last answer from the models it replaced."), ""]
    for r in report["faults"]:
        lines += [f"## {r['fault']}", "", r["description"], "",
                  ("| phase | s | sent | failed | degraded (top reasons) | refused 503 | p50 ms | "
                  "p99 ms |"), "|---|---:|---:|---:|---|---:|---:|---:|"]
        for phase in ("before", "during", "after"):
            p = r["phases"][phase]
            lines.append(f"| {phase} | {r['seconds'][phase]:g} | {p['sent']:,} | {p['failed']:,}"
                         f"{' (' + _reasons(p['failed_by']) + ')' if p['failed'] else ''} | "
                         f"{p['degraded']:,} ({_reasons(p['degraded_by'])}) | "
                         f"{p['refused_503']:,} | {_cell(p['p50_ms'])} | {_cell(p['p99_ms'])} |")
        e = r["events"]
        lines += ["", (f"Events: {e['sent']:,} sent, {e['accepted']:,} accepted, "
                  f"{e['refused_503']:,} refused with 503 ({e['refused_but_stored']:,} of them "
                  f"stored all the same), {e['failed']:,} failed, **{e['lost']} lost**. "
                  f"Recovery: {_cell(r['recovery_s'], ' s')} (not at full quality after it: "
                  f"{r['bad_after_recovery']:,}). Restored: "
                  f"{'yes' if r['restored']['ok'] else 'NO ' + json.dumps(r['restored'])}."),
                  *_models_line(r),
                  f"Notes: `{json.dumps(r['notes'], default=str)}`", "",
                  f"![{r['fault']}]({r['plot']})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
