"""A/B routing: deterministic weighted assignment, file loading and validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from recsys.experiments.routing import (
    Experiment,
    ExperimentConfigError,
    Router,
    Variant,
    active_experiment,
    assign,
    default_experiment,
    load_experiments,
    stable_unit,
)

AB = Experiment(
    "ranker-v2",
    (Variant("control", "champion", 50), Variant("treatment", "challenger", 50)),
    salt="s1",
)
DOCUMENT: dict[str, Any] = {
    "active": "ranker-v2",
    "experiments": [
        {
            "name": "ranker-v2",
            "salt": "s1",
            "variants": [
                {"name": "control", "alias": "champion", "weight": 50},
                {"name": "treatment", "alias": "challenger", "weight": 50},
            ],
        },
        {
            "name": "three-way",
            "variants": [
                {"name": "a", "alias": "champion", "weight": 0.7},
                {"name": "b", "alias": "challenger", "weight": 0.2},
                {"name": "c", "alias": "candidate", "weight": 0.1},
            ],
        },
    ],
}
USERS = [f"user-{i}" for i in range(20_000)]


def write_document(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(document))
    return path


def test_assignment_is_pinned() -> None:
    # A change here reshuffles every user of every running experiment: do it on purpose only.
    assert stable_unit("a", "b") == pytest.approx(0.8470103307049967, abs=0)
    names = [assign(AB, u).name for u in ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"]]
    assert names == [
        "control",
        "treatment",
        "treatment",
        "treatment",
        "treatment",
        "treatment",
        "control",
        "treatment",
    ]


def test_two_routers_from_the_same_file_agree(tmp_path: Path) -> None:
    path = write_document(tmp_path, DOCUMENT)
    first, second = Router(active_experiment(path)), Router(active_experiment(path))
    assert [first.variant_for(u) for u in USERS[:2000]] == [
        second.variant_for(u) for u in USERS[:2000]
    ]


def test_assignment_is_the_same_in_another_process() -> None:
    script = (
        "from recsys.experiments.routing import Experiment, Variant, assign\n"
        "e = Experiment('ranker-v2', (Variant('control', 'champion', 50),"
        " Variant('treatment', 'challenger', 50)), salt='s1')\n"
        "print(''.join(assign(e, f'user-{i}').name[0] for i in range(500)))\n"
    )
    here = "".join(assign(AB, f"user-{i}").name[0] for i in range(500))
    for seed in ("1", "2"):  # hash() would differ between these; the assignment must not
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == here


def test_distribution_matches_weights() -> None:
    experiment = load_experiments(DOCUMENT)["three-way"]
    counts = Counter(assign(experiment, u).name for u in USERS)
    for name, share in {"a": 0.7, "b": 0.2, "c": 0.1}.items():
        assert abs(counts[name] / len(USERS) - share) < 0.02, counts


def test_zero_weight_variant_is_never_served_nor_loaded() -> None:
    experiment = Experiment(
        "ramp", (Variant("control", "champion", 1), Variant("treatment", "challenger", 0))
    )
    assert {assign(experiment, u).name for u in USERS[:5000]} == {"control"}
    assert Router(experiment).aliases() == {"champion"}


def test_experiment_name_and_salt_reshuffle_users() -> None:
    renamed = Experiment("ranker-v3", AB.variants, salt=AB.salt)
    resalted = Experiment(AB.name, AB.variants, salt="s2")
    base = [assign(AB, u).name for u in USERS[:4000]]
    for other in (renamed, resalted):
        moved = sum(a != assign(other, u).name for a, u in zip(base, USERS[:4000]))
        assert 0.4 < moved / 4000 < 0.6  # independent 50/50 splits disagree half the time


def test_int_and_string_user_ids_are_the_same_user() -> None:
    assert all(assign(AB, i) == assign(AB, str(i)) for i in range(1000))


def test_default_is_all_champion() -> None:
    router = Router()
    assert router.experiment == default_experiment()
    assert {router.variant_for(u).alias for u in USERS[:5000]} == {"champion"}
    assert router.aliases() == {"champion"}


def test_load_from_file(tmp_path: Path) -> None:
    path = write_document(tmp_path, DOCUMENT)
    experiments = load_experiments(path)
    assert list(experiments) == ["ranker-v2", "three-way"]
    assert experiments["ranker-v2"] == AB
    assert active_experiment(path) == AB
    assert active_experiment(str(path), "three-way").name == "three-way"
    assert Router(active_experiment(path)).aliases() == {"champion", "challenger"}
    assert Router(experiments["three-way"]).aliases() == {"champion", "challenger", "candidate"}


def test_no_active_experiment_means_default(tmp_path: Path) -> None:
    path = write_document(tmp_path, {**DOCUMENT, "active": None})
    assert active_experiment(path) == default_experiment()
    assert active_experiment({"experiments": []}) == default_experiment()


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ((Variant("a", "champion", 1), Variant("a", "challenger", 1)), r"duplicate.*\['a'\]"),
        ((Variant("a", "champion", 0), Variant("b", "challenger", 0)), "sum to > 0"),
        ((), "non-empty"),
    ],
)
def test_experiment_validation_names_the_problem(variants: Any, message: str) -> None:
    with pytest.raises(ExperimentConfigError, match=message):
        Experiment("bad", variants)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "t", "alias": "c", "weight": -1}, r"'t' weight must be finite and >= 0, got -1"),
        ({"name": "t", "alias": "c", "weight": float("nan")}, r"'t' weight .* got nan"),
        ({"name": "t", "alias": "c", "weight": True}, r"'t' weight must be a number, got True"),
        ({"name": "t", "alias": "c", "weight": "1"}, r"'t' weight must be a number, got '1'"),
        ({"name": "t", "alias": "", "weight": 1}, r"variant 't' alias .* got ''"),
        ({"name": "t", "alias": "  ", "weight": 1}, r"variant 't' alias .* got '  '"),
        ({"name": "", "alias": "c", "weight": 1}, r"variant name .* got ''"),
    ],
)
def test_variant_validation_names_the_field_and_value(kwargs: Any, message: str) -> None:
    with pytest.raises(ExperimentConfigError, match=message):
        Variant(**kwargs)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**DOCUMENT, "active": "nope"}, r"'active' names 'nope'.*defined: \['ranker-v2'"),
        ({"experiments": [], "activ": None}, r"unknown keys \['activ'\]"),
        (
            {"experiments": [{"name": "x", "variants": [{"name": "a", "alias": "c", "w": 1}]}]},
            r"experiments\[0\]: variant 'a': unknown keys \['w'\]",
        ),
        (
            {
                "experiments": [
                    {"name": "x", "variants": [{"name": "a", "alias": "c", "weight": -2}]}
                ]
            },
            r"experiments\[0\]: variant 'a' weight must be finite and >= 0, got -2",
        ),
        ({"experiments": [DOCUMENT["experiments"][0]] * 2}, "'ranker-v2' is defined twice"),
        ({"experiments": {"name": "x"}}, "'experiments' must be a list"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_file_errors_name_the_file_and_value(tmp_path: Path, document: Any, message: str) -> None:
    path = write_document(tmp_path, document)
    with pytest.raises(ExperimentConfigError, match=message) as raised:
        load_experiments(path)
    assert str(path) in str(raised.value)


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ExperimentConfigError, match="broken.json: not valid JSON"):
        load_experiments(path)


def test_unknown_active_override_is_rejected() -> None:
    with pytest.raises(
        ExperimentConfigError, match=r"'missing' is not defined.*\['ranker-v2', 'three-way'\]"
    ):
        active_experiment(DOCUMENT, "missing")
