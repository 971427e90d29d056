"""The request path end to end on real trained models and a real Redis: caching, history, filters,
every fallback branch (through RECSYS_FAULTS), model promotion, A/B routing and shadow scoring.

Requests go through RecommendPipeline.respond and the service's ResponseEncoder, as in production;
the answer is what a client decodes."""
from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from devtools.local_redis import LocalRedis
from recsys.app.assembly import RemoteModels, build_runtime
from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.context import Context
from recsys.errors import StoreError, UnknownIdError
from recsys.experiments.shadow_sinks import read_shadow_log
from recsys.features import DENSE_FEATURES
from recsys.models.bundles import EmbeddingBundle, RankerBundle
from recsys.models.policy import RankingPolicy, item_to_item_vector
from recsys.pipeline.explain import EMBEDDING_GROUPS, contributions, feature_groups, occluded
from recsys.pipeline.recommend import result_key
from recsys.pipeline.request import RecommendRequest
from recsys.pipeline.retrieval import AnnSource, CandidateSource, RetrievalQuery
from recsys.pipeline.scorers import LocalScorer
from recsys.pipeline.towers import LocalUserTower
from recsys.stores.cache_keys import make_key
from tests.support.runtime import (
    RESULT_KEYS,
    SOURCES,
    USER,
    K,
    Recorder,
    SlowTower,
    cached_results,
    ids,
    recommend,
    rows,
    seen_by,
    serve,
    settings,
)

# ---- the healthy path ---------------------------------------------------------------------

def test_recommend_serves_k_ranked_items_then_caches(redis_url: str, refs: list[ModelRefs],
                                                     champion: EmbeddingBundle) -> None:
    async def scenario(runtime: Runtime) -> list[dict[str, Any]]:
        return [await recommend(runtime), await recommend(runtime)]

    first, second = serve(settings(redis_url), refs, scenario)
    assert len(first["items"]) == K and len(set(ids(first))) == K
    assert [item["rank"] for item in first["items"]] == list(range(1, K + 1))
    assert all(item["sources"] and set(item["sources"]) <= SOURCES for item in first["items"])
    assert all(item["title"] for item in first["items"])
    scores = [item["score"] for item in first["items"]]
    assert scores == sorted(scores, reverse=True)  # diversity is off by default
    assert not set(ids(first)) & seen_by(champion, USER)  # seen at training time: never shown
    assert first["model_versions"] == refs[0].versions
    assert (first["variant"], first["ranker"], first["user_id"]) == ("control", "ranker", USER)
    assert first["degraded"] is False and first["degraded_reasons"] == []
    assert re.fullmatch(r"[0-9a-f]{32}", first["request_id"])
    assert first["cache"] == "miss" and first["latency_ms"] > 0

    assert second["cache"] == "l1"
    assert ids(second) == ids(first)
    assert second["request_id"] != first["request_id"]
    assert len(cached_results(redis_url)) == 1

    # Another worker (a second runtime) on the same Redis is served from L2.
    third = serve(settings(redis_url), refs, recommend)
    assert third["cache"] == "l2" and ids(third) == ids(first)


def test_a_hit_answers_with_the_cached_result_itself_and_a_memoised_key(
        redis_url: str, refs: list[ModelRefs]) -> None:
    """What the service's response encoder and the hit path rely on."""
    request = RecommendRequest(USER, K, exclude_items=())

    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        pipeline = runtime.pipeline
        slot = pipeline.resolver.champion
        first = await pipeline.respond(request)
        second = await pipeline.respond(RecommendRequest(USER, K))  # equal, not identical
        return first, second, result_key(slot, request), slot

    first, again, key, slot = serve(settings(redis_url), refs, scenario)
    assert again.result is first.result  # the same object: never modified, so its JSON is kept
    assert (first.fields["cache"], again.fields["cache"]) == ("miss", "l1")
    assert (first.from_cache, again.from_cache) == (False, True)
    assert not set(first.result) & set(first.fields)
    assert key == make_key("results", slot.versions, request.cache_fields())
    assert list(slot.result_keys.items()) == [(request, key)]  # computed once for both


def test_recent_items_change_the_result_and_are_excluded(redis_url: str,
                                                         refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], ...]:
        base = await recommend(runtime, "cold-visitor")
        recent = tuple(ids(base)[:3])
        return base, await recommend(runtime, "cold-visitor", recent_items=recent)

    base, with_recent = serve(settings(redis_url), refs, scenario)
    recent = ids(base)[:3]
    assert with_recent["cache"] == "miss"  # a different request, a different key
    assert len(with_recent["items"]) == K and not set(recent) & set(ids(with_recent))
    # The recent items feed the user tower: items in both lists are scored differently.
    base_scores = {item["item_id"]: item["score"] for item in base["items"]}
    shared = [item for item in with_recent["items"] if item["item_id"] in base_scores]
    assert all(item["score"] != base_scores[item["item_id"]] for item in shared)
    assert ids(with_recent)[:K - 3] != ids(base)[3:]


def test_exclude_items_are_honoured_without_changing_the_rest(redis_url: str,
                                                              refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], ...]:
        base = await recommend(runtime)
        return base, await recommend(runtime, exclude_items=tuple(ids(base)[:3]))

    base, filtered = serve(settings(redis_url), refs, scenario)
    assert len(filtered["items"]) == K
    assert not set(ids(base)[:3]) & set(ids(filtered))
    # The same user vector: the rest stay, scored as before. The ranker scores the policy's
    # depth of candidates left after the filters (others may join them), and the int8 ranker
    # quantises each batch by its own range, so scores move by that rounding (near-ties may swap).
    base_scores = {item["item_id"]: item["score"] for item in base["items"]}
    assert set(ids(base)[3:]) <= set(ids(filtered))
    assert all(abs(item["score"] - base_scores[item["item_id"]]) < 1e-2
               for item in filtered["items"] if item["item_id"] in base_scores)


def test_category_filters_are_honoured(redis_url: str, refs: list[ModelRefs],
                                       champion: EmbeddingBundle) -> None:
    vocab = champion.catalog.genre_vocab

    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], ...]:
        return (await recommend(runtime, k=5, include_categories=("Action", "Western")),
                await recommend(runtime, k=5, exclude_categories=("Drama", "Comedy")),
                await recommend(runtime, k=5, include_categories=("Action",),
                                exclude_categories=("Drama",)))

    included, excluded, both = serve(settings(redis_url), refs, scenario)
    for result in (included, excluded, both):
        assert len(result["items"]) == 5 and not result["degraded"]
    genres = champion.catalog.genres
    action, western = vocab.index("Action"), vocab.index("Western")
    drama, comedy = vocab.index("Drama"), vocab.index("Comedy")
    assert genres[rows(champion, ids(included))][:, [action, western]].any(axis=1).all()
    assert not genres[rows(champion, ids(excluded))][:, [drama, comedy]].any()
    chosen = genres[rows(champion, ids(both))]
    assert chosen[:, action].all() and not chosen[:, drama].any()


@pytest.mark.parametrize("fields, field", [
    ({"recent_items": ("i1", "no-such-item")}, "recent_item_ids"),
    ({"exclude_items": ("missing-1",)}, "exclude_item_ids"),
    ({"include_categories": ("Polka",)}, "filters.include_categories"),
    ({"exclude_categories": ("Action", "Polka")}, "filters.exclude_categories"),
])
def test_unknown_ids_and_categories_are_rejected(redis_url: str, refs: list[ModelRefs],
                                                 fields: dict[str, Any], field: str) -> None:
    async def scenario(runtime: Runtime) -> None:
        with pytest.raises(UnknownIdError) as caught:
            await recommend(runtime, **fields)
        error = caught.value
        assert error.field == field
        assert str(error).startswith(f"{field}: ")
        assert ("Polka" if "categories" in field else "'no-such-item'" if "recent" in field
                else "'missing-1'") in str(error)

    serve(settings(redis_url), refs, scenario)
    assert cached_results(redis_url) == []


# ---- fallbacks, each made to happen -------------------------------------------------------

def degraded_twice(redis_url: str, refs: list[ModelRefs], faults: str,
                   **overrides: Any) -> tuple[dict[str, Any], dict[str, Any], Recorder]:
    telemetry = Recorder()

    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], ...]:
        return await recommend(runtime), await recommend(runtime)

    overrides.setdefault("degraded_ttl_s", 0.0)
    first, second = serve(settings(redis_url, faults=faults, **overrides), refs, scenario,
                          telemetry)
    assert first["degraded"] and len(first["items"]) == K
    # With RECSYS_DEGRADED_TTL_S=0 degraded results are never cached: the next identical
    # request computes again, and shows the fault again.
    assert (first["cache"], second["cache"]) == ("miss", "miss")
    assert cached_results(redis_url) == []
    assert second["degraded_reasons"] == first["degraded_reasons"]
    return first, second, telemetry


def test_ranker_error_uses_the_fallback_ranker(redis_url: str, refs: list[ModelRefs]) -> None:
    result, _, telemetry = degraded_twice(redis_url, refs, "ranker:error")
    assert result["ranker"] == "fallback"
    assert result["degraded_reasons"] == ["ranker_error"]
    assert {"reason": "ranker_error"} in telemetry.named("fallback")
    assert telemetry.named("ranker_error") == [{"error": "InjectedFault"}] * 2


def test_ranker_timeout_uses_the_fallback_ranker(redis_url: str, refs: list[ModelRefs]) -> None:
    started = time.perf_counter()
    result, _, _ = degraded_twice(redis_url, refs, "ranker:timeout", ranking_timeout_ms=200.0)
    assert time.perf_counter() - started < 4.5  # two requests, not two 5 s hangs
    assert (result["ranker"], result["degraded_reasons"]) == ("fallback", ["ranker_timeout"])


def test_ranker_and_fallback_errors_keep_retrieval_order(redis_url: str,
                                                         refs: list[ModelRefs]) -> None:
    result, _, telemetry = degraded_twice(redis_url, refs, "ranker:error,fallback:error")
    assert result["ranker"] == "retrieval"
    assert result["degraded_reasons"] == ["ranker_error+fallback_error"]
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)
    assert telemetry.named("fallback_error")


def test_the_trained_policy_takes_each_user_down_the_path_validation_chose(
        redis_url: str, refs: list[ModelRefs], champion: EmbeddingBundle) -> None:
    """By default a slot follows its ranker bundle's policy. Here one where item-to-item serves
    histories of 1-2 events and the ranker lost to retrieval order: the ranker, set to fail,
    is never called, and nothing is degraded. Then one where retrieval order serves 3-4 events
    and the ranker the longer histories: only those reach the (failing) ranker."""
    telemetry = Recorder()

    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        slot = runtime.pipeline.resolver.slots["champion"]
        trained, slot.policy = slot.policy, RankingPolicy(short_history=2, use_ranker=False)
        items = [str(i) for i in slot.catalog.item_ids[1:6]]
        lost = (await recommend(runtime, "policy-new-user", recent_items=tuple(items[:2])),
                await recommend(runtime, "policy-new-user", recent_items=tuple(items[:3])),
                await recommend(runtime))
        slot.policy = RankingPolicy(short_history=2, use_ranker=True, retrieval_until=4)
        ranked = (await recommend(runtime, "policy-user-4", recent_items=tuple(items[:4])),
                  await recommend(runtime, "policy-user-5", recent_items=tuple(items)))
        return trained, lost, ranked

    trained, (short, longer, known), (four, five) = serve(
        settings(redis_url, ranking_policy="trained", faults="ranker:error"), refs, scenario,
        telemetry)
    assert trained == RankerBundle.load(refs[0].paths["ranker"]).policy
    assert [r["ranker"] for r in (short, longer, known, four)] == [
        "item_to_item", "retrieval", "retrieval", "retrieval"]
    assert not any(r["degraded"] for r in (short, longer, known, four))
    assert (five["ranker"], five["degraded_reasons"]) == ("fallback", ["ranker_error"])
    assert telemetry.named("ranker_error") == [{"error": "InjectedFault"}]
    # lists served without the ranker, by path (recsys_unranked_lists_total)
    assert telemetry.named("ranking_path") == [{"path": p} for p in (
        "item_to_item", "retrieval", "retrieval", "retrieval")]
    # item-to-item: each item scored by its mean similarity to the two items, best first
    rows = [champion.catalog.index_lookup()[i] for i in ids(short)]
    query = item_to_item_vector(champion.item_vectors, np.array([1, 2]))
    np.testing.assert_allclose([i["score"] for i in short["items"]],
                               champion.item_vectors[rows] @ query, atol=1e-5)
    assert len(short["items"]) == K  # the two items themselves are not shown again
    assert not {str(i) for i in champion.catalog.item_ids[1:3]} & set(ids(short))


class CountingScorer:
    """A slot's primary scorer, recording how many candidates each call scores."""

    def __init__(self, scorer: Any) -> None:
        self.scorer, self.rows = scorer, []

    async def score(self, features: np.ndarray) -> np.ndarray:
        self.rows.append(len(features))
        return await self.scorer.score(features)


def test_the_ranker_scores_the_depth_its_policy_chose_at_most_the_services(
        refs: list[ModelRefs]) -> None:
    """The trained policy's depth (ranked_candidates) is what the ranker scores, also under
    rank_all; RECSYS_RANKED_CANDIDATES caps it, and a policy without one ranks that many."""
    async def scenario(runtime: Runtime, depth: int | None) -> tuple[int | None, list[int]]:
        slot = runtime.pipeline.resolver.slots["champion"]
        trained = slot.policy.ranked_candidates
        slot.policy = replace(slot.policy, ranked_candidates=depth or trained)
        counting = slot.ranker.primary = CountingScorer(slot.ranker.primary)
        answer = await recommend(runtime, USER)
        assert answer["ranker"] == "ranker" and len(answer["items"]) == K
        return trained, counting.rows

    trained, rows = serve(settings(None), refs, lambda runtime: scenario(runtime, None))
    assert trained is not None and rows == [trained]  # rank_all keeps the trained depth
    assert serve(settings(None), refs, lambda runtime: scenario(runtime, 30))[1] == [30]
    assert serve(settings(None, ranked_candidates=20), refs,
                 lambda runtime: scenario(runtime, 30))[1] == [20]
    assert serve(settings(None, ranked_candidates=40), refs,
                 lambda runtime: scenario(runtime, 10**6))[1] == [40]


def test_explain_says_why_each_item_is_there_without_changing_the_list(
        redis_url: str, refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], ...]:
        return (await recommend(runtime), await recommend(runtime, explain=True),
                await recommend(runtime, explain=True), await recommend(runtime, "new-user",
                                                                        explain=True))

    plain, explained, again, cold = serve(settings(redis_url), refs, scenario)
    assert ids(explained) == ids(plain) and "explanation" not in plain["items"][0]
    assert (explained["cache"], again["cache"]) == ("miss", "l1")  # cached apart from plain
    names = {*DENSE_FEATURES, *EMBEDDING_GROUPS}
    for item in explained["items"]:
        why = item["explanation"]
        assert why["path"] == "ranker" and why["sources"] == item["sources"]
        assert np.isfinite(why["similarity"])
        effects = why["contributions"]
        assert len(effects) == 3 and {e["feature"] for e in effects} <= names
        assert [abs(e["effect"]) for e in effects] == sorted((abs(e["effect"]) for e in effects),
                                                             reverse=True)
    assert all(i["explanation"] == {"path": "popularity", "sources": i["sources"],
                                    "similarity": i["explanation"]["similarity"],
                                    "contributions": []} for i in cold["items"])


def test_explain_under_a_failing_ranker_explains_the_fallback(redis_url: str,
                                                              refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> dict[str, Any]:
        return await recommend(runtime, explain=True)

    result = serve(settings(redis_url, faults="ranker:error"), refs, scenario)
    assert result["ranker"] == "fallback"
    assert all(i["explanation"]["path"] == "fallback" and len(i["explanation"]["contributions"])
               == 3 for i in result["items"])


def test_occlusion_zeroes_one_feature_group_per_copy_and_ranks_effects() -> None:
    width = len(DENSE_FEATURES) + 2 * 4
    rows = np.arange(2 * width, dtype=np.float32).reshape(2, width) + 1.0
    copies = occluded(rows)
    groups = feature_groups(width)
    assert copies.shape == (2 * len(groups), width)
    for g, (_, columns) in enumerate(groups):
        assert not copies[g, columns].any() and (copies[g].sum() + rows[0, columns].sum()
                                                 == pytest.approx(rows[0].sum()))
    scores = np.array([1.0, 2.0], dtype=np.float32)
    occluded_scores = np.repeat(scores, len(groups))
    occluded_scores[1] -= 0.5  # the second group helped item 0 by 0.5
    occluded_scores[len(groups) + 3] += 0.9  # the fourth hurt item 1 by 0.9
    top = contributions(scores, occluded_scores, width, top=1)
    assert top == [[{"feature": groups[1][0], "effect": 0.5}],
                   [{"feature": groups[3][0], "effect": -0.9}]]


def test_failed_source_is_reported_and_the_others_serve(redis_url: str,
                                                        refs: list[ModelRefs]) -> None:
    result, _, telemetry = degraded_twice(redis_url, refs, "ann:error")
    assert result["degraded_reasons"] == ["source_failed:ann"]
    assert result["ranker"] == "ranker"
    assert all(item["sources"] and "ann" not in item["sources"] for item in result["items"])
    assert {"source": "ann", "error": "InjectedFault"} in telemetry.named("source_failed")


def test_an_unranked_list_asks_the_ann_source_alone(redis_url: str,
                                                     refs: list[ModelRefs]) -> None:
    """A list in retrieval order is the user vector's nearest items: the other sources, set to
    fail here, are not run for it (nothing degraded), and are for a list the ranker orders."""
    telemetry = Recorder()

    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        slot = runtime.pipeline.resolver.slots["champion"]
        slot.policy = RankingPolicy(short_history=0, use_ranker=True, retrieval_until=3)
        items = tuple(str(i) for i in slot.catalog.item_ids[1:6])
        return (await recommend(runtime, "unranked-user", recent_items=items[:2]),
                await recommend(runtime, "ranked-user", recent_items=items))

    unranked, ranked = serve(settings(redis_url, ranking_policy="trained",
                                      faults="popular:error,item2item:error"),
                             refs, scenario, telemetry)
    assert (unranked["ranker"], unranked["degraded"]) == ("retrieval", False)
    assert all(item["sources"] == ["ann"] for item in unranked["items"])
    assert ranked["degraded_reasons"] == ["source_failed:popular", "source_failed:item2item"]
    assert [e["source"] for e in telemetry.named("source_failed")] == ["popular", "item2item"]


class NeededAnn:
    """The slot's ANN source, recording each query's `needed`; unbounded, it asks for all k."""

    name, inline = "ann", True

    def __init__(self, source: CandidateSource, bounded: bool) -> None:
        assert source.name == AnnSource.name
        self.source, self.bounded = source, bounded
        self.needed: list[int | None] = []

    def __call__(self, query: RetrievalQuery) -> np.ndarray:
        self.needed.append(query.needed)
        return self.source(query if self.bounded else replace(query, needed=None))


@pytest.mark.parametrize("ranker", ["ranked", "retrieval"])
def test_the_ann_source_is_asked_for_no_more_than_can_be_ranked_and_the_list_is_the_same(
        redis_url: str, refs: list[ModelRefs], champion: EmbeddingBundle, ranker: str) -> None:
    """The number ranked plus the seen and excluded items, or every one of its k under a
    category filter (it may drop any number): the nearest items past that many could never be
    ranked, so the answers equal those of an ANN source asked for all k."""
    async def scenario(runtime: Runtime, bounded: bool) -> tuple[list[Any], NeededAnn]:
        slot = runtime.pipeline.resolver.slots["champion"]
        if ranker == "retrieval":  # the unranked path: the ANN source alone, cut to 20 too
            slot.policy = RankingPolicy(short_history=0, use_ranker=True, retrieval_until=10**6)
        ann = NeededAnn(slot.retriever.sources[0], bounded)
        slot.retriever.sources[0] = ann
        answers = [await recommend(runtime, USER, k=20),
                   await recommend(runtime, USER, k=20, exclude_items=("i1", "i2", "i3")),
                   await recommend(runtime, USER, k=20, include_categories=("Drama",))]
        return [(ids(a), [i["score"] for i in a["items"]], a["ranker"]) for a in answers], ann

    config = settings(None, ranked_candidates=20, ann_candidates=300,
                      ranking_policy="trained" if ranker == "retrieval" else "rank_all")
    bounded, ann = serve(config, refs, lambda runtime: scenario(runtime, True))
    unbounded, _ = serve(config, refs, lambda runtime: scenario(runtime, False))
    seen = len(seen_by(champion, USER))
    assert ann.needed == [20 + seen, 20 + seen + 3, None]
    assert 20 + seen + 3 < 300  # the bound cut the search short
    assert bounded == unbounded
    assert {r for _, _, r in bounded} == {"retrieval" if ranker == "retrieval" else "ranker"}


def test_every_source_failing_falls_back_to_popularity(redis_url: str, refs: list[ModelRefs],
                                                       champion: EmbeddingBundle) -> None:
    result, _, telemetry = degraded_twice(redis_url, refs, "ann:error,popular:error,item2item:error")
    assert result["degraded_reasons"] == ["retrieval_failed"]
    assert all(item["sources"] == ["popular"] for item in result["items"])
    assert not set(ids(result)) & seen_by(champion, USER)
    assert {"reason": "retrieval_failed"} in telemetry.named("fallback")


def test_a_degraded_result_is_cached_only_for_the_degraded_ttl(redis_url: str,
                                                               refs: list[ModelRefs]) -> None:
    """Under a fault, repeats are answered from the cache (an overloaded service must not
    recompute degraded answers) but only for RECSYS_DEGRADED_TTL_S, then computed afresh."""
    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], ...]:
        first, second = await recommend(runtime), await recommend(runtime)
        await asyncio.sleep(0.6)
        return first, second, await recommend(runtime)

    first, second, later = serve(settings(redis_url, faults="ranker:error", degraded_ttl_s=0.5),
                                 refs, scenario)
    assert first["degraded"] and "ranker_error" in first["degraded_reasons"]
    assert (first["cache"], second["cache"], later["cache"]) == ("miss", "l1", "miss")
    assert ids(second) == ids(first) and second["degraded"]
    with redis.Redis.from_url(redis_url) as client:  # L2 holds it no longer than the cap
        ttls_ms = [client.pttl(key) for key in client.scan_iter(RESULT_KEYS)]
    assert ttls_ms and all(0 < ttl <= 500 for ttl in ttls_ms)


def test_redis_down_degrades_history_and_serves_repeats_from_l1(
        redis_server: LocalRedis, redis_url: str, refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> tuple[Any, ...]:
        await recommend(runtime, "warm-up-user")  # connections open, sessions warm
        redis_server.stop()
        try:
            first, second = await recommend(runtime), await recommend(runtime)
            with pytest.raises(StoreError):
                await runtime.event_recorder.record_event(USER, ids(first)[0], "click", 1.0)
        finally:
            redis_server.start()
        return first, second

    first, second = serve(settings(redis_url, breaker_failures=2), refs, scenario)
    for result in (first, second):
        assert result["degraded_reasons"] == ["history_unavailable"]
        assert len(result["items"]) == K and result["ranker"] == "ranker"
    # computed without Redis, then kept in the in-process level for RECSYS_DEGRADED_TTL_S
    assert (first["cache"], second["cache"]) == ("miss", "l1")
    assert ids(second) == ids(first)


# ---- model versions, promotion, A/B and shadow --------------------------------------------

def test_promotion_changes_the_cache_key(redis_url: str, refs: list[ModelRefs]) -> None:
    champion, challenger = refs
    promoted = ModelRefs("champion", challenger.paths, challenger.versions)
    request = RecommendRequest(USER, K)

    async def scenario() -> tuple[Any, ...]:
        results, keys = [], []
        for champion_refs in (champion, champion, promoted):
            runtime = build_runtime(settings(redis_url), [champion_refs], Recorder())
            try:
                results.append(await recommend(runtime))
                keys.append(result_key(runtime.pipeline.resolver.champion, request))
            finally:
                await runtime.aclose()
        return results, keys

    (before, restarted, after), keys = asyncio.run(scenario())
    assert champion.versions != challenger.versions
    assert (before["cache"], restarted["cache"]) == ("miss", "l2")  # same models: shared entry
    assert after["cache"] == "miss"  # promoted models never see the old champion's entries
    assert after["model_versions"] == challenger.versions
    assert keys[0] == keys[1] != keys[2]
    assert len(cached_results(redis_url)) == 2


def write_experiment(path: Path) -> Path:
    path.write_text(json.dumps({"active": "ranker-ab", "experiments": [{
        "name": "ranker-ab", "salt": "test",
        "variants": [{"name": "control", "alias": "champion", "weight": 50},
                     {"name": "treatment", "alias": "challenger", "weight": 50}]}]}))
    return path


def test_ab_assignment_is_stable_and_serves_the_variant_models(tmp_path: Path,
                                                                refs: list[ModelRefs]) -> None:
    config = settings(None, experiment_file=write_experiment(tmp_path / "experiments.json"))
    users = [f"ab-user-{n}" for n in range(200)]
    versions = {"control": refs[0].versions, "treatment": refs[1].versions}

    async def scenario(runtime: Runtime) -> list[tuple[str, dict[str, str]]]:
        slots = runtime.pipeline.resolver.slots
        assert set(slots) == {"champion", "challenger"}
        request = RecommendRequest(USER, 3)
        assert result_key(slots["champion"], request) != result_key(slots["challenger"], request)
        served = []
        for user in users:
            result = await recommend(runtime, user, k=3)
            served.append((result["variant"], result["model_versions"]))
        return served

    first = serve(config, refs, scenario)
    second = serve(config, refs, scenario)
    assert [variant for variant, _ in first] == [variant for variant, _ in second]
    counts = {name: sum(variant == name for variant, _ in first) for name in versions}
    assert 60 <= counts["control"] <= 140 and counts["control"] + counts["treatment"] == 200
    assert all(served == versions[variant] for variant, served in first + second)


def test_shadow_scores_the_challenger_off_the_request_path(tmp_path: Path, redis_url: str,
                                                           refs: list[ModelRefs]) -> None:
    challenger_models = RemoteModels(
        SlowTower(LocalUserTower(EmbeddingBundle.load(refs[1].paths["embedding"])), delay_s=1.0),
        LocalScorer(RankerBundle.load(refs[1].paths["ranker"])))
    log = tmp_path / "shadow.jsonl"
    telemetry = Recorder()

    async def scenario(runtime: Runtime) -> tuple[dict[str, Any], float, float]:
        assert runtime.shadow is not None
        runtime.shadow.start()
        await runtime.item_ranker.rank_items(USER, ("i1", "i2"), Context())  # warm the champion
        started = time.perf_counter()
        result = await recommend(runtime)
        elapsed = time.perf_counter() - started
        deadline = time.perf_counter() + 20.0
        while not (log.exists() and log.read_text().strip()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        return result, elapsed, time.perf_counter() - started

    result, elapsed, until_logged = serve(
        settings(redis_url, shadow_fraction=1.0, shadow_log=str(log), tower_timeout_ms=1500.0,
                 retrieval_timeout_ms=1500.0), refs, scenario, telemetry,
        remote={"challenger": challenger_models})
    assert elapsed < 0.5 and result["latency_ms"] < 500  # the 1 s challenger is not awaited
    assert until_logged >= 1.0
    assert result["variant"] == "control" and result["model_versions"] == refs[0].versions
    [record] = read_shadow_log(log)
    assert (record.request_id, record.user_id, record.k) == (result["request_id"], USER, K)
    assert record.error is None and record.challenger is not None
    assert list(record.champion.items) == ids(result)
    assert record.champion.versions == refs[0].versions
    assert record.challenger.versions == refs[1].versions
    assert len(record.challenger.items) == K and len(record.challenger.scores) == K
    assert record.challenger.latency_ms is not None and record.challenger.latency_ms >= 1000
    assert record.agreement is not None and record.agreement["k"] == K
    assert telemetry.named("shadow_written") == [{"sink": "jsonl"}]


class StageRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.stages: list[str] = []

    def observe(self, stage: str, seconds: float) -> None:
        self.stages.append(stage)


def test_warm_up_leaves_no_trace_in_the_metrics(redis_url: str, refs: list[ModelRefs]) -> None:
    telemetry = StageRecorder()

    async def scenario(runtime: Runtime) -> tuple[list[str], list[str], list[str]]:
        await runtime.start()  # warm-up: three full requests per slot
        after_warmup = list(telemetry.stages)
        events = [name for name, _ in telemetry.events]
        await recommend(runtime)
        return after_warmup, events, telemetry.stages

    after_warmup, events, after_request = serve(settings(redis_url), refs, scenario, telemetry)
    assert after_warmup == [] and "candidates" not in events
    assert {"retrieval", "ranking", "features"} <= set(after_request)  # served requests count
