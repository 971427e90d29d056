"""The one time order of an interaction log: by timestamp, ties broken by a salted hash of
(user, item), so that the order, and every split, history and replay cut made from it, is the
same whatever the input file's row order.

Why a hash and not the item id: with ties broken by item id, the held-out event of a user whose
last events share a second is the one with the larger id, a rule a model can learn from item
identity; sequential models then score far higher on exactly those users. A hash of the pair
carries no order a model can learn. Exact duplicates (same user, item and time) stay in input
order, which changes nothing that is split or learned.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from training.data.schema import ITEM_ID, TIMESTAMP, USER_ID

# 16 characters: pandas' SipHash key. Change it and every split changes: it names the protocol.
TIE_SALT = "recsys-ties-v001"
_TIE = "__tie__"


def tie_keys(interactions: pd.DataFrame) -> np.ndarray:
    """[N] uint64: a stable hash of each row's (user, item), ints and their decimal strings alike."""
    pairs = interactions[[USER_ID, ITEM_ID]].astype(str)
    return pd.util.hash_pandas_object(pairs, index=False, hash_key=TIE_SALT).to_numpy()


def time_ordered(interactions: pd.DataFrame, per_user: bool = True) -> pd.DataFrame:
    """`interactions` sorted by (user,) timestamp, then the tie key; the index is kept."""
    keys = [USER_ID, TIMESTAMP, _TIE] if per_user else [TIMESTAMP, _TIE]
    keyed = interactions.assign(**{_TIE: tie_keys(interactions)})
    return keyed.sort_values(keys, kind="stable").drop(columns=_TIE)
