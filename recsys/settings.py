"""Serving settings: one typed object read once at start-up from RECSYS_* environment variables."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LIST_FIELDS = ("ranking_policy", "ranker_int8", "ann_candidates", "popular_candidates",
               "item_to_item_seeds", "item_to_item_per_seed", "ranked_candidates", "diversity",
               "max_per_category")


class ServingSettings(BaseSettings):
    """Every field is also an environment variable: RECSYS_<FIELD NAME IN CAPITALS>."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_", frozen=True, extra="ignore")

    # Models: "pinned" serves the BentoML model tags per alias of the models file (written by
    # `python -m registry export`; what a built Bento serves); "registry" serves what the MLflow
    # registry's aliases point to and follows them live (topology "inline").
    model_source: Literal["pinned", "registry"] = "pinned"
    models_file: Path = Path("serving-models.json")
    registry_uri: str | None = Field(None, description="MLflow tracking server, http://host:port")
    registry_poll_s: float = Field(5.0, gt=0, description="seconds between registry polls (+-20%)")
    model_cache_dir: Path = Path("~/.cache/recsys/models")
    warm_users: int = Field(200, ge=0, description="most active users cached before a swap")
    warm_seconds: float = Field(10.0, gt=0, description="longest a swap's cache prefill may take")
    canary_tick_s: float = Field(1.0, gt=0, description="how often workers count, route and judge "
                                 "a canary")
    # The admin endpoints (canary control) need this token as "Authorization: Bearer <token>";
    # without it they are disabled.
    admin_token: SecretStr | None = None
    # Where the user tower and ranker run: "inline" (in the API process) or "services"
    # (separate BentoML services with adaptive batching).
    topology: Literal["inline", "services"] = "inline"
    gpu: int = Field(0, ge=0, description="GPUs per model service (0: CPU)")
    # Adaptive batching of the model services' APIs; false serves one request per call (BentoML
    # has no per-call switch and rejects max_batch_size=1, so "off" is an API that is not
    # batchable). Takes effect only with topology "services".
    batching: bool = True
    max_batch_size: int = Field(8192, gt=0, description="rows per adaptive batch")
    max_latency_ms: int = Field(200, gt=0, description="BentoML batching latency target")
    onnx_threads: int = Field(1, gt=0)
    # Serve the ranker bundle's int8 model on the CPU (2x faster scoring, the same HR@10 on
    # MovieLens 100K; see training/export.py); false, or a GPU, serves the fp32 model.
    ranker_int8: bool = True
    # "trained": each user takes the path the model set's ranking policy gives their number of
    # events (chosen on validation at training: recsys/models/policy.py); "rank_all": everyone
    # with history through the ranker, at the depth training chose (the ranker measured for
    # itself, e.g. in an experiment).
    ranking_policy: Literal["trained", "rank_all"] = "trained"
    # API worker processes. Each holds its own models and L1 cache (L2 is shared through Redis);
    # one worker runs the pipeline on one core, so a second core needs a second worker.
    workers: int = Field(1, gt=0)
    # BentoML's OpenTelemetry spans around each request: off unless traces are exported (they
    # cost CPU on every request even when none is; serving/tracing.py)
    trace_requests: bool = False

    # Redis (L2 cache, event history, shadow stream). None: start a local redis-server.
    redis_url: str | None = None
    redis_timeout_ms: float = Field(20.0, gt=0)
    result_ttl_s: float = Field(60.0, gt=0)
    degraded_ttl_s: float = Field(5.0, ge=0, description="cache life of a degraded result (0: never)")
    user_vector_ttl_s: float = Field(300.0, gt=0)
    l1_max_items: int = Field(10_000, gt=0)
    history_max_events: int = Field(200, gt=0)
    # How long an event's event_id is remembered: a retry within it is never recorded twice
    event_id_ttl_s: float = Field(86_400.0, gt=0)
    # Read the lists the batch job precomputed (python -m batch --redis) on a cache miss, before
    # computing, for requests of a user id and k only (README "Batch scoring on Ray")
    precomputed_tier: bool = False

    # Request limits, checked at the HTTP edge (serving/edge.py) before any work
    max_k: int = Field(100, gt=0)
    max_list_items: int = Field(1000, gt=0, description="longest item list a request may carry")
    # 1,000 item ids of up to 200 characters each fit with room to spare; larger bodies get 413
    max_body_bytes: int = Field(1_048_576, gt=0, description="largest request body accepted")
    max_concurrency: int = Field(256, gt=0, description="requests in progress per service, "
                                 "shared out over its workers; beyond it 429")
    request_timeout_s: float = Field(10.0, gt=0, description="a request not answered by then: 504")
    # Per client, per API worker (limits' notation: "N/second", "N per minute"; "" turns it
    # off). The client is the peer address, or the first address of client_address_header when
    # a trusted load balancer sets one (e.g. "x-forwarded-for").
    events_rate_limit: str = Field("1000/second", description="/events per client; beyond: 429")
    client_address_header: str | None = None

    # Retrieval and ranking
    ann_candidates: int = Field(1000, gt=0)
    popular_candidates: int = Field(100, ge=0)
    item_to_item_seeds: int = Field(5, ge=0, description="recent items used as item-to-item seeds")
    item_to_item_per_seed: int = Field(50, ge=0)
    # What training evaluates the ranker on and chooses the ranking policy with (EvalConfig's
    # candidates, the retrieval's top 200): more would serve a ranker on lists it was not
    # measured on, at 5x the features' and the ranker's cost.
    ranked_candidates: int = Field(200, gt=0, description="the most candidates the ranker scores "
                                   "(a model set's ranking policy may choose fewer)")
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="MMR weight of diversity (0: off)")
    max_per_category: int = Field(0, ge=0, description="cap of items sharing a first genre (0: off)")

    # Search (POST /search). The typo similarity, the fusion's k and its weights are what
    # `python -m training search-eval` chose on MovieLens 100K validation queries (README
    # "Search"); rerun it on your data and set them here.
    search: bool = Field(True, description="build each model set's search index when it loads")
    search_candidates: int = Field(200, gt=0, description="items each search retriever proposes")
    search_ranker: bool = Field(True, description="order the first fused results with the "
                                "bundle's search ranker where training chose it on validation; "
                                "false: reciprocal rank fusion alone")
    search_typo_similarity: float = Field(75.0, ge=0, le=100, description="least RapidFuzz "
                                          "ratio (0-100) for a typo's correction")
    search_rrf_k: float = Field(5.0, gt=0, description="reciprocal rank fusion constant k")
    search_vector_weight: float = Field(0.1, ge=0, description="fusion weight of the item-space "
                                        "list (BM25's is 1)")
    search_personal_weight: float = Field(2.0, ge=0, description="fusion weight of the user's "
                                          "taste list")
    search_vector_timeout_ms: float = Field(30.0, gt=0, description="the item-space retriever")
    search_personal_timeout_ms: float = Field(30.0, gt=0, description="the user's vector")

    # Latency budget (ms) and its per-stage timeouts
    budget_ms: float = Field(150.0, gt=0)
    tower_timeout_ms: float = Field(30.0, gt=0, description="user tower, then a mean-of-items vector")
    retrieval_timeout_ms: float = Field(30.0, gt=0)
    ranking_timeout_ms: float = Field(60.0, gt=0)
    breaker_failures: int = Field(5, gt=0)
    breaker_reset_s: float = Field(10.0, gt=0)

    # Fault injection for tests and game days, e.g. "ranker:error,ann:timeout" (devtools/faults.py,
    # which a checkout has and the Bento does not)
    faults: str = ""

    # Experiments and shadow scoring
    experiment_file: Path | None = None
    shadow_fraction: float = Field(0.0, ge=0.0, le=1.0)
    shadow_log: str = "shadow.jsonl"  # a path, or "redis" for the stream recsys:shadow

    def list_fields(self) -> dict[str, Any]:
        """The settings that change a /recommend list beyond its models and request: a
        precomputed list is served only under the settings it was computed with."""
        return {name: getattr(self, name) for name in LIST_FIELDS}

    @field_validator("models_file", "model_cache_dir")
    @classmethod
    def _home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="after")
    def _consistent(self) -> ServingSettings:
        if self.precomputed_tier and not self.redis_url:
            raise ValueError("RECSYS_PRECOMPUTED_TIER=true needs RECSYS_REDIS_URL: the batch "
                             "job's lists are in Redis")
        if self.model_source == "registry":
            if not self.registry_uri:
                raise ValueError("RECSYS_MODEL_SOURCE=registry needs RECSYS_REGISTRY_URI (an "
                                 "MLflow tracking server, http://host:port)")
            if self.topology != "inline":
                raise ValueError("RECSYS_MODEL_SOURCE=registry serves RECSYS_TOPOLOGY=inline: the "
                                 "model services of 'services' load pinned models")
        if self.ranked_candidates > self.ann_candidates + self.popular_candidates + \
                self.item_to_item_seeds * self.item_to_item_per_seed:
            raise ValueError(
                f"RECSYS_RANKED_CANDIDATES={self.ranked_candidates} exceeds what retrieval can "
                "return (ann + popular + item-to-item candidates)")
        stages = self.tower_timeout_ms + self.retrieval_timeout_ms + self.ranking_timeout_ms
        if stages > self.budget_ms:
            raise ValueError(
                f"RECSYS_TOWER_TIMEOUT_MS + RECSYS_RETRIEVAL_TIMEOUT_MS + RECSYS_RANKING_TIMEOUT_MS "
                f"({self.tower_timeout_ms} + {self.retrieval_timeout_ms} + "
                f"{self.ranking_timeout_ms}) exceed RECSYS_BUDGET_MS={self.budget_ms}: the stages "
                "run one after the other")
        return self
