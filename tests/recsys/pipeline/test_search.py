"""POST /search's request path on real trained models: query understanding, the retrievers in
parallel, fusion, pagination, personalisation, the cache, and the degraded answers when the
item-space retriever or the personalisation fails (through RECSYS_FAULTS).

Requests go through SearchPipeline.respond and the service's ResponseEncoder; every answer is
held to the documented HTTP contract."""
from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from recsys.app.models_file import ModelRefs
from recsys.app.runtime import Runtime
from recsys.errors import UnknownIdError
from recsys.features import ItemCatalog
from recsys.models import artifacts
from recsys.models.bundles import EmbeddingBundle
from recsys.pipeline.search_request import SearchRequest
from recsys.search.engine import chosen_search_ranking
from recsys.search.learned import RERANKED, SEARCH_FEATURES, SEARCH_RANKER
from serving.responses import ResponseEncoder
from serving.search_schemas import SearchResponse
from tests.support.runtime import USER, Recorder, serve, settings

ENCODER = ResponseEncoder()
SEARCH_STAGES = {"search_parse", "search_bm25", "search_vector", "search_fusion"}


async def search(runtime: Runtime, query: str, **fields: Any) -> dict[str, Any]:
    assert runtime.search is not None
    body = ENCODER.encode(await runtime.search.respond(SearchRequest(query, **fields)))
    SearchResponse.model_validate_json(body)
    return json.loads(body)


def titles(result: dict[str, Any]) -> list[str]:
    return [item["title"] for item in result["items"]]


def a_title(catalog: ItemCatalog, row: int) -> list[str]:
    """The words of a synthetic title: two genre words and the item's own id word."""
    return str(catalog.titles[row]).split()


def test_a_title_is_found_first_and_a_typo_is_read_as_the_word_meant(
        refs: list[ModelRefs], champion: EmbeddingBundle) -> None:
    first, second, id_word = a_title(champion.catalog, 7)
    typo = first[:2] + first[3:]  # one letter dropped

    async def scenario(runtime: Runtime) -> list[dict[str, Any]]:
        return [await search(runtime, f"{first} {second} {id_word}"),
                await search(runtime, f"{typo} {id_word}")]

    exact, typed = serve(settings(None), refs, scenario)
    assert titles(exact)[0] == str(champion.catalog.titles[7])
    assert titles(typed)[0] == str(champion.catalog.titles[7])
    assert typed["understood"]["corrections"] == {typo.lower(): first.lower()}
    assert not exact["degraded"] and not exact["personalised"]
    assert exact["items"][0]["retrievers"][0] == "bm25"


def test_a_category_word_filters(refs: list[ModelRefs], champion: EmbeddingBundle) -> None:
    async def scenario(runtime: Runtime) -> dict[str, Any]:
        return await search(runtime, "horror", page_size=50)

    found = serve(settings(None), refs, scenario)
    horror = champion.catalog.genre_vocab.index("Horror")
    lookup = champion.catalog.index_lookup()
    assert found["understood"]["categories"] == ["Horror"]
    assert found["items"] and all(champion.catalog.genres[lookup[i["item_id"]], horror] > 0
                                  for i in found["items"])
    assert found["total"] == min(int((champion.catalog.genres[:, horror] > 0).sum()),
                                 found["total"])


def test_a_query_that_matches_nothing_answers_an_empty_page(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> list[dict[str, Any]]:
        return [await search(runtime, "qqqzzzx wwvvk"), await search(runtime, "?!")]

    for found in serve(settings(None), refs, scenario):
        assert found["items"] == [] and found["total"] == 0 and not found["degraded"]


def test_pages_continue_the_ranking(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> list[dict[str, Any]]:
        return [await search(runtime, "comedy", page_size=6),
                await search(runtime, "comedy", page=2, page_size=3),
                await search(runtime, "comedy", page=1000, page_size=3)]

    whole, second, past = serve(settings(None), refs, scenario)
    assert [i["rank"] for i in second["items"]] == [4, 5, 6]
    assert titles(second) == titles(whole)[3:6]
    assert second["total"] == whole["total"] > 6
    assert past["items"] == [] and past["total"] == whole["total"]


def test_the_request_filters_meet_the_query(refs: list[ModelRefs],
                                            champion: EmbeddingBundle) -> None:
    async def scenario(runtime: Runtime) -> dict[str, Any]:
        return await search(runtime, "horror", categories=("Comedy",), page_size=50)

    found = serve(settings(None), refs, scenario)
    lookup, vocab = champion.catalog.index_lookup(), champion.catalog.genre_vocab
    for item in found["items"]:
        genres = champion.catalog.genres[lookup[item["item_id"]]]
        assert genres[vocab.index("Horror")] > 0 and genres[vocab.index("Comedy")] > 0


def test_an_unknown_category_filter_is_the_clients_error(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> None:
        await search(runtime, "horror", categories=("Nope",))

    with pytest.raises(UnknownIdError, match="filters.categories"):
        serve(settings(None), refs, scenario)


def test_a_user_personalises_the_order(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> list[dict[str, Any]]:
        return [await search(runtime, "comedy", page_size=20),
                await search(runtime, "comedy", user_id=USER, page_size=20),
                await search(runtime, "comedy", user_id="never-seen-before", page_size=20)]

    anonymous, personal, stranger = serve(settings(None), refs, scenario)
    assert not anonymous["personalised"]
    assert all("personal" not in i["retrievers"] for i in anonymous["items"])
    assert personal["personalised"] and not personal["degraded"]
    assert all("personal" in i["retrievers"] for i in personal["items"])
    assert titles(personal) != titles(anonymous)
    assert sorted(titles(stranger)) == sorted(titles(anonymous))  # no history: no taste
    assert not stranger["personalised"] and not stranger["degraded"]


def test_recent_items_alone_personalise(refs: list[ModelRefs],
                                        champion: EmbeddingBundle) -> None:
    recent = tuple(str(i) for i in champion.catalog.item_ids[1:4])

    async def scenario(runtime: Runtime) -> dict[str, Any]:
        return await search(runtime, "drama", recent_items=recent)

    assert serve(settings(None), refs, scenario)["personalised"]


def test_a_failed_vector_retriever_leaves_bm25_to_answer(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> list[dict[str, Any]]:
        return [await search(runtime, "comedy"), await search(runtime, "thriller")]

    for faults, reason in (("search_vector:error", "search_vector_error"),
                           ("search_vector:timeout", "search_vector_timeout")):
        config = settings(None, faults=faults, search_vector_timeout_ms=200.0)
        for found in serve(config, refs, scenario):
            assert found["degraded"] and found["degraded_reasons"] == [reason], faults
            assert found["items"] and all(i["retrievers"] == ["bm25"] for i in found["items"])


def test_a_personalisation_out_of_time_leaves_the_query_to_decide(
        refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> dict[str, Any]:
        return await search(runtime, "comedy", user_id=USER)

    config = settings(None, faults="user_tower:timeout", search_personal_timeout_ms=200.0)
    found = serve(config, refs, scenario)
    assert found["degraded_reasons"] == ["search_personal_timeout"]
    assert not found["personalised"] and found["items"]


def test_results_are_cached_by_the_normalised_query(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> list[str]:
        levels = []
        for query, page in (("Horror", 1), ("  HORROR!! ", 1), ("horror", 2)):
            assert runtime.search is not None
            answer = await runtime.search.respond(SearchRequest(query, page=page))
            levels.append(answer.fields["cache"])
        return levels

    assert serve(settings(None), refs, scenario) == ["miss", "l1", "miss"]


def test_a_degraded_page_is_cached_briefly(refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> list[str]:
        assert runtime.search is not None
        return [(await runtime.search.respond(SearchRequest("comedy"))).fields["cache"]
                for _ in range(2)]

    config = settings(None, faults="search_vector:error", degraded_ttl_s=0.0)
    assert serve(config, refs, scenario) == ["miss", "miss"]  # a TTL of 0: never cached


def test_stage_timings_and_events_are_reported(refs: list[ModelRefs]) -> None:
    telemetry = Recorder()
    observed: list[str] = []
    telemetry.observe = lambda stage, seconds: observed.append(stage)  # type: ignore[method-assign]

    async def scenario(runtime: Runtime) -> None:
        await search(runtime, "comdy")  # a typo
        await search(runtime, "comedy", user_id=USER)

    serve(settings(None), refs, scenario, telemetry)
    assert SEARCH_STAGES | {"search_personal"} <= set(observed)
    assert telemetry.named("search") == [{"personalised": "false", "result": "hits"},
                                         {"personalised": "true", "result": "hits"}]
    assert len(telemetry.named("search_correction")) == 1


@pytest.fixture(scope="module")
def learned_refs(refs: list[ModelRefs], tmp_path_factory: pytest.TempPathFactory
                 ) -> list[ModelRefs]:
    """The champion with its search ranker chosen whatever validation said on the synthetic
    data: its embedding bundle copied, the choice rewritten in the manifest (the files, and so
    the fingerprint the rankers are bound to, stay the same)."""
    champion = refs[0]
    copy = tmp_path_factory.mktemp("learned") / "embedding"
    shutil.copytree(champion.paths["embedding"], copy)
    manifest = artifacts.read_manifest(copy, "embedding")
    chosen = {**manifest.metadata["search_ranking"], "use": "learned"}
    artifacts.write_manifest(copy, "embedding", {**manifest.metadata, "search_ranking": chosen})
    return [ModelRefs(champion.alias, {**champion.paths, "embedding": copy}, champion.versions),
            *refs[1:]]


def test_training_wrote_a_search_ranker_and_its_choice(champion: EmbeddingBundle) -> None:
    chosen = champion.manifest.metadata["search_ranking"]
    assert chosen["use"] in ("learned", "fusion")
    assert chosen["features"] == list(SEARCH_FEATURES) and chosen["training_queries"] > 0
    for ranking in ("fusion", "learned"):
        assert set(chosen["validation"][ranking]) == {"known_item", "known_item_user",
                                                      "category", "objective"}
    assert (champion.path / SEARCH_RANKER).is_file()
    assert chosen["onnx_parity_max_abs_diff"] < 1e-4


def test_the_served_search_ranking_is_learned_only_where_chosen_and_present(
        learned_refs: list[ModelRefs], tmp_path_factory: pytest.TempPathFactory) -> None:
    """What /search serves and what the offline search evaluation reports it serves: one rule."""
    learned = learned_refs[0].paths["embedding"]
    assert chosen_search_ranking(EmbeddingBundle.load(learned)) == "learned"
    without = tmp_path_factory.mktemp("without") / "embedding"
    shutil.copytree(learned, without)
    (without / SEARCH_RANKER).unlink()
    assert chosen_search_ranking(EmbeddingBundle.load(without, verify=False)) == "fusion"


def test_the_learned_ranker_orders_the_first_fused_results(learned_refs: list[ModelRefs],
                                                           refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> list[dict[str, Any]]:
        return [await search(runtime, "comedy", user_id=USER, page_size=RERANKED),
                await search(runtime, "comedy", user_id=USER, page_size=RERANKED, page=2)]

    learned = serve(settings(None), learned_refs, scenario)
    fused = serve(settings(None, search_ranker=False), refs, scenario)
    assert [page["ranking"] for page in learned] == ["learned", "learned"]
    assert [page["ranking"] for page in fused] == ["fusion", "fusion"]
    assert not learned[0]["degraded"]
    # The same first 50 in another order, the rest as fused; scores still fall down the list.
    assert sorted(titles(learned[0])) == sorted(titles(fused[0]))
    assert titles(learned[1]) == titles(fused[1])
    scores = [i["score"] for page in learned for i in page["items"]]
    assert scores == sorted(scores, reverse=True)


def test_a_failed_search_ranker_leaves_the_fused_order(learned_refs: list[ModelRefs],
                                                       refs: list[ModelRefs]) -> None:
    async def scenario(runtime: Runtime) -> dict[str, Any]:
        return await search(runtime, "comedy", user_id=USER)

    failed = serve(settings(None, faults="search_ranker:error"), learned_refs, scenario)
    fused = serve(settings(None, search_ranker=False), refs, scenario)
    assert failed["degraded"] and failed["degraded_reasons"] == ["search_ranker_error"]
    assert failed["ranking"] == "fusion" and titles(failed) == titles(fused)


def test_without_search_the_endpoint_is_unavailable(refs: list[ModelRefs]) -> None:
    from recsys.pipeline.search import SearchUnavailableError

    async def scenario(runtime: Runtime) -> None:
        await search(runtime, "comedy")

    with pytest.raises(SearchUnavailableError):
        serve(settings(None, search=False), refs, scenario)
