"""The tutorial baseline: FastAPI + uvicorn, the same ONNX models and FAISS index, per request.

Loads the bundles under $NAIVE_BUNDLES (embedding/, ranker/) with onnxruntime and faiss
directly, one thread each as the service runs them: with their default pools (a thread per
core) the server's CPU per request swung from 4.0 to 8.9 ms across runs of the same benchmark,
spin-waiting rather than work. Each request: user tower → FAISS top-1000 → drop seen
items → ranker features (recsys.features, as training builds them) → ranker → top k.
No batching, no cache, no fallbacks, a sync endpoint in FastAPI's thread pool.

    NAIVE_BUNDLES=path/to/work uvicorn benchmarks.naive_server:app --port 8000
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

from recsys.context import Context
from recsys.features import PAD, user_ranker_inputs
from recsys.models import artifacts

CANDIDATES = 1000
BUNDLES = Path(os.environ.get("NAIVE_BUNDLES", "artifacts/latest"))

embedding = BUNDLES / "embedding"
catalog = artifacts.load_catalog(embedding)
users = artifacts.load_user_histories(embedding)
user_rows = {} if users is None else {u: i for i, u in enumerate(users.user_ids.tolist())}
n_attributes = max(len(artifacts.load_user_attributes(embedding).names), 1)
item_vectors = np.load(embedding / artifacts.ITEM_VECTORS)
faiss.omp_set_num_threads(1)
index = faiss.read_index(str(embedding / artifacts.ITEM_INDEX))
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
user_tower = ort.InferenceSession(str(embedding / artifacts.USER_TOWER), options)
ranker = ort.InferenceSession(str(BUNDLES / "ranker" / artifacts.RANKER), options)
scaler = artifacts.load_scaler(BUNDLES / "ranker")
history_len = int(artifacts.load_json(embedding / artifacts.CONFIG)["history_len"])

app = FastAPI()


class RequestContext(BaseModel):
    hour: int | None = None
    device: str = "unknown"


class RecommendBody(BaseModel):
    user_id: str
    k: int = 10
    context: RequestContext = RequestContext()


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/recommend")
def recommend(body: RecommendBody) -> dict[str, Any]:
    start = time.perf_counter()
    row = user_rows.get(body.user_id)
    if row is not None and users is not None:
        history, attributes = users.histories[row], users.attributes[row]
        seen = users.seen(row)
    else:
        history = np.zeros(history_len, dtype=np.int64)
        attributes = np.zeros(n_attributes, dtype=np.int64)
        seen = np.zeros(0, dtype=np.int64)
    user = user_tower.run(["user_vector"], {"history": history[None, :].astype(np.int64),
                                            "attributes": attributes[None, :].astype(np.int64)})[0]
    _, ids = index.search(user.astype(np.float32), CANDIDATES)
    candidates = ids[0][(ids[0] > PAD) & ~np.isin(ids[0], seen)]
    features = user_ranker_inputs(user[0], history, candidates, item_vectors, catalog,
                                  Context(body.context.hour, body.context.device), scaler)
    scores = ranker.run(None, {"features": features})[0].reshape(-1)
    top = np.argsort(-scores)[:body.k]
    items = [{"item_id": str(catalog.item_ids[candidates[p]]),
              "title": str(catalog.titles[candidates[p]]), "score": round(float(scores[p]), 6),
              "rank": n + 1, "sources": ["ann"]} for n, p in enumerate(top)]
    return {"user_id": body.user_id, "items": items, "model_versions": {}, "ranker": "ranker",
            "degraded": False, "degraded_reasons": [], "variant": "naive", "cache": "none",
            "request_id": "0" * 32, "latency_ms": round((time.perf_counter() - start) * 1000, 3)}
