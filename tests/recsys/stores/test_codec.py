"""The cache value codec: JSON-like values and numeric arrays to bytes and back, never pickle."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from recsys.stores.codec import UndecodableValue, decode_value, encode_value


def test_values_and_arrays_round_trip_with_their_generation() -> None:
    vector = np.arange(6, dtype=np.float32).reshape(2, 3)
    value = {"items": [{"id": "i1", "score": 0.5}], "vector": vector, "rows": np.arange(3),
             "pair": (1, "a"), "none": None, "flag": True}

    generation, back = decode_value(encode_value(value, 7))

    assert generation == 7
    np.testing.assert_array_equal(back["vector"], vector)
    assert back["vector"].dtype == np.float32 and not back["vector"].flags.writeable
    assert back["rows"].tolist() == [0, 1, 2] and back["pair"] == [1, "a"]  # tuples: lists
    assert {k: back[k] for k in ("items", "none", "flag")} == \
        {"items": [{"id": "i1", "score": 0.5}], "none": None, "flag": True}
    assert decode_value(encode_value([np.float32(1.5)], None)) == (None, [1.5])


@pytest.mark.parametrize("value", [{1: "int key"}, {"__ndarray__": 1}, {"s": {1, 2}},
                                   np.array(["text"]), object()])
def test_what_json_cannot_carry_is_refused(value: object) -> None:
    with pytest.raises(TypeError):
        encode_value(value, None)


@pytest.mark.parametrize("payload", [
    pickle.dumps({"a": 1}), b"", b"RCv1", b"RCv1\x05\x00\x00\x00{bad}",
    encode_value({"g": 1}, None).replace(b'"g": null', b'"g": "x"'),
])
def test_anything_else_is_undecodable(payload: bytes) -> None:
    with pytest.raises(UndecodableValue):
        decode_value(payload)
