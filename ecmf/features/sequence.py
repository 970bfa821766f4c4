"""Frame-level sequences (MERTools' "-FRA" features): pooling to a fixed number of steps and
their Parquet layout, a float32 fixed-size list of steps * dim values with b"steps"/b"dim" metadata.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ecmf import schema


def pool_steps(x: np.ndarray, steps: int) -> np.ndarray:
    """Mean of `x` [t, D] over `steps` equal time segments -> float32 [steps, D].

    Segment k covers rows [k*t//steps, (k+1)*t//steps); where t < steps each row is repeated
    so that the output keeps the time order and every step holds a real row.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pool_steps expects a [time, dim] array, got shape {x.shape}")
    if steps < 1:
        raise ValueError(f"pool_steps: steps must be >= 1, got {steps}")
    t = x.shape[0]
    if t == 0:
        raise ValueError("pool_steps: the sequence is empty (0 time steps)")
    x = x.astype(np.float32, copy=False)
    k = np.arange(steps)
    start = k * t // steps
    end = np.maximum(start + 1, (k + 1) * t // steps)
    # Segment means from a cumulative sum: no Python loop over steps.
    csum = np.concatenate([np.zeros((1, x.shape[1]), np.float64),
                           np.cumsum(x, axis=0, dtype=np.float64)])
    out = (csum[end] - csum[start]) / (end - start)[:, None]
    return out.astype(np.float32)


def sequence_field(name: str, steps: int, dim: int) -> pa.Field:
    """The Parquet field of feature `name`'s sequence column, with its shape in the metadata."""
    return pa.field(schema.sequence_column(name), pa.list_(pa.float32(), steps * dim),
                    metadata={b"steps": str(steps).encode(), b"dim": str(dim).encode()})


def sequence_array(x: np.ndarray) -> pa.FixedSizeListArray:
    """[N, steps, dim] -> a fixed-size-list array of steps * dim float32 values per row."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"sequence_array expects [rows, steps, dim], got shape {x.shape}")
    n, steps, dim = x.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), steps * dim)


def sequence_shape(field: pa.Field) -> tuple[int, int]:
    """(steps, dim) of a sequence column, read from its field metadata."""
    meta = field.metadata or {}
    try:
        steps, dim = int(meta[b"steps"]), int(meta[b"dim"])
    except (KeyError, ValueError):
        raise ValueError(f"column {field.name!r} lacks integer b'steps'/b'dim' field metadata; "
                         f"got {dict(meta)}") from None
    size = field.type.list_size
    if steps * dim != size:
        raise ValueError(f"column {field.name!r}: metadata steps={steps} x dim={dim} does not "
                         f"match its list size {size}")
    return steps, dim


def sequence_to_numpy(col: pa.ChunkedArray | pa.Array, steps: int, dim: int) -> np.ndarray:
    """A sequence column as float32 [N, steps, dim]."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    return flat.reshape(-1, steps, dim)
