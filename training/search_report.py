"""The search evaluation's report: the test table with the issue's targets, and the validation
grid's best points."""
from __future__ import annotations

from typing import Any

TARGETS = {"known_item_hr@10_clean": 0.95, "known_item_hr@10_typo": 0.85,
           "personalised_over_bm25_hr@10": 1.5}  # issue 17

ROWS = (
    ("known-item, clean", "known_item_clean"),
    ("known-item, one typo", "known_item_typo"),
    ("known-item, clean, asked by the user (personalised)", "known_item_clean_user"),
    ("known-item, one typo, asked by the user (personalised)", "known_item_typo_user"),
    *((f"known-item, clean, {n} word{'s' if n > 1 else ''}", f"known_item_clean_{n}_words")
      for n in (1, 2, 3)),
    *((f"known-item, typo, {n} word{'s' if n > 1 else ''}", f"known_item_typo_{n}_words")
      for n in (1, 2, 3)),
    ("category: BM25 alone", "category_bm25"),
    ("category: hybrid (BM25 + item space)", "category_hybrid"),
    ("category: personalised (+ user's taste)", "category_personalised"),
)


def cell(stat: dict[str, float] | None, digits: int = 4) -> str:
    if stat is None or stat["mean"] is None:  # None: not finite (training/search_step.py)
        return "-"
    if stat["ci95"] is None:
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def rows(test: dict[str, Any]) -> list[dict[str, Any]]:
    """The test table as records (query kind, queries per seed, HR@10 and MRR@10 with their
    95% half-widths), in the report's order; for a notebook's DataFrame or plot."""
    return [{"queries": label, "n per seed": test[f"{name}/queries"]["mean"],
             "hr@10": test[f"{name}/hr@10"]["mean"], "hr@10 ±": test[f"{name}/hr@10"]["ci95"],
             "mrr@10": test[f"{name}/mrr@10"]["mean"],
             "mrr@10 ±": test[f"{name}/mrr@10"]["ci95"]}
            for label, name in ROWS if f"{name}/hr@10" in test]


def markdown(result: dict[str, Any]) -> str:
    test, chosen = result["test"], result["chosen"]
    seeds = len(result["config"]["seeds"])
    order = {"learned": "the fused lists ordered by the learned search ranker",
             "fusion": "the fused lists as fused"}[result.get("ranking", "fusion")]
    lines = [f"Test split, mean ± 95% t-interval over {seeds} query seeds; {order}.", "",
             "| queries | n per seed | HR@10 | MRR@10 |", "|---|---|---|---|"]
    for label, name in ROWS:
        if f"{name}/hr@10" in test:
            lines.append(f"| {label} | {test[f'{name}/queries']['mean']:.0f} | "
                         f"{cell(test[f'{name}/hr@10'])} | {cell(test[f'{name}/mrr@10'])} |")
    ratio = test["personalised_over_bm25_hr@10"]
    lines += ["", f"Personalised over BM25 alone (category HR@10): {cell(ratio, 2)}", "",
              "| target | wanted | measured | met |", "|---|---|---|---|"]
    measured = {"known_item_hr@10_clean": test["known_item_clean/hr@10"]["mean"],
                "known_item_hr@10_typo": test["known_item_typo/hr@10"]["mean"],
                "personalised_over_bm25_hr@10": ratio["mean"]}
    for name, wanted in TARGETS.items():
        value = measured[name]
        met = "yes" if value is not None and value >= wanted else "no"
        shown = "-" if value is None else f"{value:.4f}"
        lines.append(f"| {name} | >= {wanted} | {shown} | {met} |")
    weights = ", ".join(f"{k} {v:g}" for k, v in chosen["weights"].items())
    settings = (f"typo similarity {chosen['typo_similarity']:g}, RRF k {chosen['rrf_k']:g}, "
                f"weights bm25 1, {weights}")
    if "validation_grid" not in result:  # the training run: the served settings, no grid
        served = f"The served settings (RECSYS_SEARCH_* defaults): {settings}."
        return "\n".join([*lines, "", served]) + "\n"
    grid = ("Validation grid, best 10 by objective (mean of the three HR@10: known-item "
            "without a user, known-item with the user, personalised category):")
    header = ("| typo similarity | k | vector | personal | known-item | known-item, user | "
              "category, personalised | objective |")
    lines += ["", f"Chosen on validation: {settings}.", "", grid, "", header,
              "|---|---|---|---|---|---|---|---|"]
    best = sorted(result["validation_grid"], key=lambda r: -r["objective"])[:10]
    for r in best:
        lines.append(f"| {r['typo_similarity']:g} | {r['k']:g} | {r['vector']:g} | "
                     f"{r['personal']:g} | {r['known_item_hr@10']:.4f} | "
                     f"{r['known_item_user_hr@10']:.4f} | {r['personalised_hr@10']:.4f} | "
                     f"{r['objective']:.4f} |")
    return "\n".join(lines) + "\n"
