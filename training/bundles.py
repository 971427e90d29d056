"""Writes model bundles: ONNX exports (checked for parity), FAISS index, catalogue, manifest."""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from recsys.features import (
    DENSE_FEATURES,
    PAD,
    FeatureScaler,
    ItemCatalog,
    UserAttributeEncoder,
    item_tower_feeds,
)
from recsys.models import artifacts
from recsys.models.index import ItemIndex, save_index
from recsys.settings import ServingSettings
from training import export
from training.fallback import fallback_scores
from training.index_build import (
    NEIGHBOUR_TABLE_MAX_ITEMS,
    IndexSpec,
    build_index,
    item_neighbours,
)
from training.index_tuning import ensure_recall, item_probe_tuner
from training.ranker import DCNRanker, score
from training.two_tower import TwoTowerModel, encode_users

PARITY_ROWS = 64  # sample rows kept in each bundle for serving's parity check
# recall@51 of the item-neighbour table on users' recent items: it is searched once, at
# training, where a request's item-to-item search stops at 0.95 (item_probe_tuner's default)
TABLE_RECALL = 0.99


def write_embedding_bundle(
    directory: Path, model: TwoTowerModel, catalog: ItemCatalog, encoder: UserAttributeEncoder,
    item_vectors: np.ndarray, sample_history: np.ndarray, sample_attributes: np.ndarray,
    metadata: dict[str, Any], user_histories: artifacts.UserHistories | None = None,
    index_spec: IndexSpec | None = None,
) -> artifacts.Manifest:
    """Export both towers, check ONNX parity on real samples, build the index (`index_spec`, by
    default choose_index_spec for the catalogue), write the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    export.export_user_tower(model, directory / artifacts.USER_TOWER)
    export.export_item_tower(model, catalog.genres.shape[1], directory / artifacts.ITEM_TOWER)
    parity = {
        "user_tower": export.check_parity(
            encode_users(model, sample_history, sample_attributes),
            export.onnx_outputs(directory / artifacts.USER_TOWER,
                                {"history": sample_history, "attributes": sample_attributes}),
            "user tower"),
    }
    rows = np.arange(1, min(catalog.size, 512) + 1)
    with torch.no_grad():
        feeds = item_tower_feeds(catalog, rows)
        expected = model.item_tower(*(torch.from_numpy(feeds[k]) for k in
                                      ("item", "genres", "title_tokens"))).numpy()
    parity["item_tower"] = export.check_parity(
        expected, export.onnx_outputs(directory / artifacts.ITEM_TOWER, feeds), "item tower")
    sample = slice(0, PARITY_ROWS)  # what serving checks the loaded user tower against
    artifacts.save_parity(directory, {artifacts.USER_TOWER: {
        "history": sample_history[sample], "attributes": sample_attributes[sample],
        "expected": encode_users(model, sample_history[sample], sample_attributes[sample])}})
    np.save(directory / artifacts.ITEM_VECTORS, item_vectors)
    # ItemIndex sets faiss's process-wide thread count: keep training's, not serving's 1.
    index = ItemIndex(build_index(item_vectors, index_spec, use_gpu=False), item_vectors,
                      threads=faiss.omp_get_max_threads())
    queries = _recall_queries(model, sample_history, sample_attributes, user_histories)
    nprobe, recall = ensure_recall(index, queries, k=min(100, catalog.size))
    # Tuned for item-to-item as serving runs it by default: its seeds per user, its neighbours
    # per seed (plus the seed itself, which the search returns too).
    serving = ServingSettings.model_fields
    seeds = _seed_rows(sample_history, user_histories, serving["item_to_item_seeds"].default)
    k = min(serving["item_to_item_per_seed"].default + 1, catalog.size)
    tune = item_probe_tuner(index, seeds, k) if seeds.size else None
    item_probes = tune() if tune else None
    neighbours = k - 1 if catalog.size <= NEIGHBOUR_TABLE_MAX_ITEMS else 0
    table_probes = None
    if neighbours:  # the item-to-item source reads its seeds' neighbours instead of searching
        # searched once, so it can afford what a request cannot: up to every list
        table_probes = tune(TABLE_RECALL, most=index.nlist) if tune else None
        np.save(directory / artifacts.ITEM_NEIGHBOURS,
                item_neighbours(index, neighbours, table_probes[0] if table_probes else None))
    save_index(index.index, directory / artifacts.ITEM_INDEX)
    artifacts.save_catalog(directory, catalog)
    artifacts.save_user_attributes(directory, encoder)
    if user_histories is not None:
        artifacts.save_user_histories(directory, user_histories)
    artifacts.save_json(directory / artifacts.CONFIG, asdict(model.config))
    return artifacts.write_manifest(directory, "embedding",
                                    {**metadata, "onnx_parity_max_abs_diff": parity,
                                     "index_kind": index.kind,
                                     **({"index_nprobe": nprobe} if nprobe is not None else {}),
                                     "index_recall_at_100_on_users": round(recall, 4),
                                     **({"index_item_nprobe": item_probes[0],
                                         "index_item_recall": round(item_probes[1], 4)}
                                        if item_probes is not None else {}),
                                     **({"item_neighbours_nprobe": table_probes[0],
                                         "item_neighbours_recall": round(table_probes[1], 4)}
                                        if table_probes is not None else {}),
                                     "item_neighbours": neighbours,
                                     "dim": int(item_vectors.shape[1]),
                                     "n_items": int(catalog.size)})


def _recall_queries(model: TwoTowerModel, sample_history: np.ndarray,
                    sample_attributes: np.ndarray,
                    users: artifacts.UserHistories | None, limit: int = 1000) -> np.ndarray:
    """User vectors to check the index's recall on: up to `limit` served users (spread over
    the snapshot), else the training samples."""
    if users is not None and len(users.user_ids):
        rows = np.linspace(0, len(users.user_ids) - 1, min(limit, len(users.user_ids))).astype(int)
        return encode_users(model, users.histories[rows], users.attributes[rows])
    return encode_users(model, sample_history[:limit], sample_attributes[:limit])


def _seed_rows(sample_history: np.ndarray, users: artifacts.UserHistories | None,
               per_user: int, limit: int = 2000) -> np.ndarray:
    """Item-to-item seeds as serving draws them: the last `per_user` items of each history
    (served users', else the training samples'), up to `limit` spread over the pool, repeats
    kept so that popular items weigh as they do in traffic."""
    histories = users.histories if users is not None and len(users.user_ids) else sample_history
    recent = np.asarray(histories)[:, -per_user:].reshape(-1)
    pool = recent[recent != PAD]
    return pool[np.linspace(0, pool.size - 1, min(limit, pool.size)).astype(int)].astype(np.int64)


def write_ranker_bundle(
    directory: Path, model: DCNRanker, scaler: FeatureScaler, config: Any,
    sample_inputs: np.ndarray, embedding_fingerprint: str, metadata: dict[str, Any],
) -> artifacts.Manifest:
    directory.mkdir(parents=True, exist_ok=True)
    path = export.export_ranker(model, sample_inputs.shape[1], directory / artifacts.RANKER)
    expected = score(model, sample_inputs)
    diff = export.check_parity(expected, export.onnx_outputs(path, {"features": sample_inputs}),
                               "ranker")
    int8 = export.quantize_ranker(path, directory / artifacts.RANKER_INT8)
    int8_scores = export.onnx_outputs(int8, {"features": sample_inputs})
    # Recorded, not enforced: quantisation moves scores by design (quality is evaluated instead).
    int8_diff = export.check_parity(expected, int8_scores, "int8 ranker", tolerance=math.inf)
    # Serving checks each file it loads against these: the fp32 model against the trained one,
    # the int8 model against its own outputs here (what ONNX Runtime gave when it was made), on
    # exactly these rows: dynamic quantisation scales activations by the whole batch's range.
    rows = sample_inputs[:PARITY_ROWS]
    artifacts.save_parity(directory, {
        artifacts.RANKER: {"features": rows, "expected": expected[:PARITY_ROWS]},
        artifacts.RANKER_INT8: {"features": rows,
                                "expected": export.onnx_outputs(int8, {"features": rows})}})
    return _finish(directory, "ranker", scaler, config, embedding_fingerprint,
                   {**metadata, "onnx_parity_max_abs_diff": diff,
                    "int8_max_abs_diff": round(int8_diff, 6)})


def write_fallback_bundle(
    directory: Path, model: LogisticRegression, scaler: FeatureScaler, config: Any,
    sample_inputs: np.ndarray, embedding_fingerprint: str, metadata: dict[str, Any],
) -> artifacts.Manifest:
    directory.mkdir(parents=True, exist_ok=True)
    path = export.export_fallback(model, sample_inputs.shape[1], directory / artifacts.RANKER)
    onnx_scores = export.onnx_outputs(path, {"features": sample_inputs}, "probabilities")[:, 1]
    expected = fallback_scores(model, sample_inputs)
    diff = export.check_parity(expected, onnx_scores, "fallback ranker")
    artifacts.save_parity(directory, {artifacts.RANKER: {
        "features": sample_inputs[:PARITY_ROWS], "expected": expected[:PARITY_ROWS]}})
    return _finish(directory, "fallback_ranker", scaler, config, embedding_fingerprint,
                   {**metadata, "onnx_parity_max_abs_diff": diff})


def _finish(directory: Path, kind: str, scaler: FeatureScaler, config: Any,
            embedding_fingerprint: str, metadata: dict[str, Any]) -> artifacts.Manifest:
    artifacts.save_scaler(directory, scaler)
    artifacts.save_json(directory / artifacts.CONFIG, asdict(config))
    return artifacts.write_manifest(directory, kind,
                                    {**metadata, "embedding_fingerprint": embedding_fingerprint,
                                     "dense_features": list(DENSE_FEATURES)})
