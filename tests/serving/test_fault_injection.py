"""RECSYS_FAULTS as the service reads it: a fault plan from a checkout, a clear refusal where the
code serving it has no devtools package (a Bento)."""
from __future__ import annotations

import sys

import pytest

from devtools.faults import FaultPlan
from serving.fault_injection import fault_plan


def test_a_plan_only_when_faults_are_named() -> None:
    assert fault_plan("") is None and fault_plan("  ") is None
    plan = fault_plan("ann:error")
    assert isinstance(plan, FaultPlan) and plan.modes == {("*", "ann"): "error"}


def test_without_devtools_the_setting_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "devtools.faults", None)  # as in a Bento: not importable

    with pytest.raises(ImportError, match=r"RECSYS_FAULTS='ranker:error' needs devtools/faults.py"):
        fault_plan("ranker:error")
    assert fault_plan("") is None  # without the setting nothing is imported


def test_a_bad_spec_stops_start_up() -> None:
    with pytest.raises(ValueError, match="RECSYS_FAULTS entry 'ranker:explode'"):
        fault_plan("ranker:explode")
