"""The compact form of a recording's values: `values_b64`, base64 of little-endian float32 or int32.

A week of minutes is 10,080 numbers; as JSON text that is ~60-80 KB to write, send and parse into
Python floats, as base64 float32 it is 53.8 KB decoded straight into an array (docs/performance.md).
float32 NaN means missing (JSON `null`); int32 has no missing marker. Activity counts and steps are
integers, exact in both types, so a recording sent either way gives the same minutes, the same cache
key and the same results.
"""

from __future__ import annotations

import base64
import binascii
from typing import Literal

import numpy as np

ValuesDtype = Literal["float32", "int32"]
_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4")}


def decode_values(text: str, dtype: ValuesDtype, *, max_values: int) -> np.ndarray:
    """`values_b64` → float64 values (NaN = missing); `ValueError` naming the problem, never the data."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("values_b64 is not valid base64 (RFC 4648, standard alphabet, padded)") from None
    width = _DTYPES[dtype].itemsize
    if len(raw) % width:
        raise ValueError(f"values_b64 decodes to {len(raw)} bytes, not a whole number of {dtype} values")
    count = len(raw) // width
    if not 1 <= count <= max_values:
        raise ValueError(f"values_b64 holds {count} values; between 1 and {max_values} are accepted")
    values = np.frombuffer(raw, dtype=_DTYPES[dtype]).astype(np.float64)
    if np.isinf(values).any():
        raise ValueError("values_b64 contains infinite values; use NaN for missing epochs")
    return values


def encode_values(values: np.ndarray, dtype: ValuesDtype = "float32") -> str:
    """Values (NaN = missing, float32 only) → `values_b64`; for clients, tests and benchmarks."""
    return base64.b64encode(np.asarray(values).astype(_DTYPES[dtype]).tobytes()).decode("ascii")
