"""What the benchmark report states: medians over repeats, ratios within the SLO, target checks."""
from __future__ import annotations

from typing import Any

from benchmarks.aggregate import best_within_slo, peer_ratios, points, target_checks


def run(target: str, connections: int, rps: float, p99: float, server_p50: float = 1.0,
        non_2xx: int = 0) -> dict[str, Any]:
    return {"target": target, "spec": {"connections": connections}, "rps": rps,
            "requests": int(rps * 5), "latency_ms": {"p50": p99 / 2, "p95": p99, "p99": p99},
            "server_latency_ms": {"p50": server_p50, "p99": 2 * server_p50},
            "non_2xx": non_2xx, "socket_errors": {"connect": 0}, "degraded": 0,
            "cpu": {"client_cores": 0.1, "server_cores": 1.0, "other_cores": 0.0}}


def test_each_point_is_the_median_of_its_repeats() -> None:
    curves = points([run("noop", 4, rps, 10.0) for rps in (100.0, 300.0, 200.0)])
    assert curves["noop"][4]["rps"] == 200.0
    assert curves["noop"][4]["rps_all"] == [100.0, 300.0, 200.0]


def test_the_slo_point_is_the_fastest_one_within_the_p99_limit_without_errors() -> None:
    curves = points([run("naive", 1, 300.0, 5.0), run("naive", 8, 400.0, 150.0),
                     run("naive", 4, 350.0, 40.0, non_2xx=3)])
    best = best_within_slo(curves["naive"], 100.0)
    assert best is not None and best["connections"] == 1  # c=8 breaks the SLO, c=4 has errors


def test_ratios_compare_each_target_at_its_own_best_point_within_the_slo() -> None:
    runs = [run("service-miss", 1, 100.0, 10.0), run("service-miss", 8, 260.0, 80.0),
            run("service-miss-1w", 8, 130.0, 95.0), run("service-hit", 8, 900.0, 20.0),
            run("noop", 8, 1000.0, 15.0), run("naive", 1, 325.0, 4.0),
            run("naive", 8, 230.0, 70.0)]
    ratios = peer_ratios(points(runs), {"runs": []}, 100.0)
    assert ratios["at_slo"]["miss_over_naive"] == 0.8  # 260 at c=8 against 325 at c=1
    assert ratios["at_slo"]["miss_over_one_worker"] == 2.0
    assert ratios["at_slo"]["hit_over_noop"] == 0.9
    assert ratios["by_concurrency"][8]["miss_over_naive"] == round(260 / 230, 4)


def test_a_ratio_just_under_a_target_fails_it() -> None:
    """2182.4 / 2425.2 = 0.89991: rounded to 3 places it read 0.9 and passed the 0.9 target."""
    runs = [run("service-hit", 8, 2182.4, 20.0), run("noop", 8, 2425.2, 15.0)]
    ratios = peer_ratios(points(runs), {"runs": []}, 100.0)
    assert ratios["at_slo"]["hit_over_noop"] == 0.8999
    checks = {c["target"]: c for c in target_checks({}, ratios, {}, 100_000, 100.0, 1000)}
    hit = next(c for name, c in checks.items() if name.startswith("cache-hit"))
    assert hit["passed"] is False


def test_the_1m_memory_check_sums_every_service_process_of_a_topology() -> None:
    scale = {"1000000": {
        "index": {"latency_top1000_ms": {"p99": 1.0}, "recall_at_100": 0.99},
        "inline": {"peak_rss_mb": {"recommender-inline:1": 1500.0}},
        "services": {"peak_rss_mb": {"api:1": 900.0, "ranker:2": 700.0, "tower:3": 600.0}},
    }}
    checks = {c["target"]: c for c in target_checks({}, {}, scale, 100_000, 100.0, 1000)}
    memory = next(c for name, c in checks.items() if name.startswith("1M items: RSS"))
    assert memory["value"] == 2200.0 and memory["passed"] is False
    retrieval = next(c for name, c in checks.items() if name.startswith("1M items: retrieval"))
    assert retrieval["passed"] is True
