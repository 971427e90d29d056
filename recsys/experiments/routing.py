"""A/B routing: deterministic, weighted assignment of users to variants that serve model aliases.

Experiments are defined in JSON (stdlib on every supported Python; ``tomllib`` needs 3.11 and
the project supports 3.10)::

    {
      "active": "ranker-v2",
      "experiments": [
        {
          "name": "ranker-v2",
          "salt": "2026-11",
          "variants": [
            {"name": "control",   "alias": "champion",   "weight": 90},
            {"name": "treatment", "alias": "challenger", "weight": 10}
          ]
        }
      ]
    }

``active`` is optional (null or absent: no experiment, everyone gets the champion); ``salt``
is optional (change it to reshuffle users without renaming); ``weight`` defaults to 1 and is
relative (90/10 and 0.9/0.1 split alike). Unknown keys are rejected, so typos fail at start-up.
A user's bucket is ``blake2b(json([experiment name, salt, user id]))`` mapped to [0, 1): the
assignment is the same in every worker, process and restart, and independent between
experiments.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ALIAS = "champion"
_UNIT_BITS = 53  # a float64 holds 53 bits exactly, so the result is always < 1.0
_DOCUMENT_KEYS = frozenset({"active", "experiments"})
_EXPERIMENT_KEYS = frozenset({"name", "salt", "variants"})
_VARIANT_KEYS = frozenset({"name", "alias", "weight"})

Source = str | os.PathLike[str] | Mapping[str, Any]


class ExperimentConfigError(ValueError):
    """An experiment definition is invalid; the message names the field and the bad value."""


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: users routed to it are served by the model alias ``alias``."""

    name: str
    alias: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        _require_text("variant name", self.name)
        _require_text(f"variant {self.name!r} alias", self.alias)
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ExperimentConfigError(
                f"variant {self.name!r} weight must be a number, got {weight!r}"
            )
        if not (math.isfinite(weight) and weight >= 0):
            raise ExperimentConfigError(
                f"variant {self.name!r} weight must be finite and >= 0, got {weight}"
            )
        object.__setattr__(self, "weight", float(weight))


@dataclass(frozen=True)
class Experiment:
    """Named split of users over ``variants`` by relative weight; ``salt`` reshuffles."""

    name: str
    variants: tuple[Variant, ...]
    salt: str = ""
    _bounds: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _require_text("experiment name", self.name)
        if not isinstance(self.salt, str):
            raise ExperimentConfigError(
                f"experiment {self.name!r} salt must be a string, got {self.salt!r}"
            )
        variants = tuple(self.variants)
        if not variants or not all(isinstance(v, Variant) for v in variants):
            raise ExperimentConfigError(
                f"experiment {self.name!r} variants must be a non-empty sequence of Variant, "
                f"got {self.variants!r}"
            )
        names = [v.name for v in variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ExperimentConfigError(
                f"experiment {self.name!r} has duplicate variant names {duplicates}"
            )
        total = math.fsum(v.weight for v in variants)
        if not total > 0:
            raise ExperimentConfigError(
                f"experiment {self.name!r} variant weights must sum to > 0, got "
                f"{ {v.name: v.weight for v in variants} }"
            )
        running, bounds = 0.0, []
        for variant in variants:
            running += variant.weight
            bounds.append(running / total)
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "_bounds", tuple(bounds))

    def aliases(self) -> frozenset[str]:
        """Aliases of variants with weight > 0: the models that must be loaded to serve it."""
        return frozenset(v.alias for v in self.variants if v.weight > 0)


def default_experiment() -> Experiment:
    """No experiment running: every user is served by the champion."""
    return Experiment("default", (Variant("control", DEFAULT_ALIAS, 1.0),))


def stable_unit(*parts: str) -> float:
    """A number in [0, 1), uniform over inputs, that depends only on ``parts``.

    Unlike ``hash()`` it is the same in every process (no PYTHONHASHSEED): changing it
    reshuffles every running experiment, so tests pin its values.
    """
    key = json.dumps(list(parts), ensure_ascii=False)
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - _UNIT_BITS)) / float(1 << _UNIT_BITS)


def bucket(experiment: Experiment, user_id: str | int) -> float:
    """The user's position in [0, 1) for this experiment (uniform over users)."""
    return stable_unit(experiment.name, experiment.salt, str(user_id))


def assign(experiment: Experiment, user_id: str | int) -> Variant:
    """The variant serving ``user_id``; ints and their decimal strings are the same user."""
    index = bisect.bisect_right(experiment._bounds, bucket(experiment, user_id))
    if index >= len(experiment.variants):  # float rounding left the last bound just below 1
        index = max(i for i, v in enumerate(experiment.variants) if v.weight > 0)
    return experiment.variants[index]


class Router:
    """Holds the active experiment; the service asks it which variant serves each user."""

    def __init__(self, experiment: Experiment | None = None) -> None:
        self.experiment = experiment or default_experiment()

    def variant_for(self, user_id: str | int) -> Variant:
        return assign(self.experiment, user_id)

    def aliases(self) -> set[str]:
        """Model aliases that must be loaded (variants with weight 0 are never served)."""
        return set(self.experiment.aliases())


def load_experiments(source: Source) -> dict[str, Experiment]:
    """Every experiment defined in a JSON file (path) or an already-parsed mapping, by name."""
    experiments, _ = _parse(source)
    return experiments


def active_experiment(source: Source, name: str | None = None) -> Experiment:
    """The experiment called ``name`` (default: the document's ``active``); none → default."""
    experiments, active = _parse(source)
    chosen = name if name is not None else active
    if chosen is None:
        return default_experiment()
    if chosen not in experiments:
        raise ExperimentConfigError(
            f"active experiment {chosen!r} is not defined in {_describe(source)}; "
            f"defined: {sorted(experiments)}"
        )
    return experiments[chosen]


def _parse(source: Source) -> tuple[dict[str, Experiment], str | None]:
    where = _describe(source)
    document = source if isinstance(source, Mapping) else _read_json(Path(source))
    if not isinstance(document, Mapping):
        raise ExperimentConfigError(f"{where}: expected a JSON object at the top, got {document!r}")
    _reject_unknown_keys(where, document, _DOCUMENT_KEYS)
    entries = document.get("experiments", [])
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise ExperimentConfigError(f"{where}: 'experiments' must be a list, got {entries!r}")
    experiments: dict[str, Experiment] = {}
    for position, entry in enumerate(entries):
        try:
            experiment = _parse_experiment(entry)
        except ExperimentConfigError as exc:
            raise ExperimentConfigError(f"{where}: experiments[{position}]: {exc}") from exc
        if experiment.name in experiments:
            raise ExperimentConfigError(
                f"{where}: experiment name {experiment.name!r} is defined twice"
            )
        experiments[experiment.name] = experiment
    active = document.get("active")
    if active is not None and active not in experiments:
        raise ExperimentConfigError(
            f"{where}: 'active' names {active!r}, which is not defined; "
            f"defined: {sorted(experiments)}"
        )
    return experiments, active


def _parse_experiment(entry: Any) -> Experiment:
    if not isinstance(entry, Mapping):
        raise ExperimentConfigError(
            f"expected an object with {sorted(_EXPERIMENT_KEYS)}, got {entry!r}"
        )
    _reject_unknown_keys(f"experiment {entry.get('name')!r}", entry, _EXPERIMENT_KEYS)
    raw_variants = entry.get("variants")
    if not isinstance(raw_variants, Sequence) or isinstance(raw_variants, str):
        raise ExperimentConfigError(f"'variants' must be a list, got {raw_variants!r}")
    variants = []
    for variant in raw_variants:
        if not isinstance(variant, Mapping):
            raise ExperimentConfigError(f"each variant must be an object, got {variant!r}")
        _reject_unknown_keys(f"variant {variant.get('name')!r}", variant, _VARIANT_KEYS)
        variants.append(
            Variant(variant.get("name", ""), variant.get("alias", ""), variant.get("weight", 1.0))
        )
    return Experiment(entry.get("name", ""), tuple(variants), entry.get("salt", ""))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExperimentConfigError(f"{path}: not valid JSON: {exc}") from exc


def _reject_unknown_keys(where: str, mapping: Mapping[str, Any], known: frozenset[str]) -> None:
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ExperimentConfigError(
            f"{where}: unknown keys {unknown}; expected some of {sorted(known)}"
        )


def _require_text(what: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ExperimentConfigError(f"{what} must be a non-empty string, got {value!r}")


def _describe(source: Source) -> str:
    return "experiment mapping" if isinstance(source, Mapping) else str(source)
