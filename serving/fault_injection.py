"""RECSYS_FAULTS for a served checkout: the fault plan of devtools/faults.py, which the Bento does
not carry (fault injection is for tests and game days, not for production images)."""
from __future__ import annotations

from recsys.app.assembly import StageWrapper


def fault_plan(spec: str) -> StageWrapper | None:
    """None when `spec` names no faults; ValueError for a bad spec, ImportError naming the
    setting when the code serving it has no devtools package."""
    if not spec.strip():
        return None
    try:
        from devtools.faults import FaultPlan
    except ImportError as error:
        raise ImportError(f"RECSYS_FAULTS={spec!r} needs devtools/faults.py, which a checkout "
                          "has and a Bento does not: unset RECSYS_FAULTS") from error
    return FaultPlan.parse(spec)
