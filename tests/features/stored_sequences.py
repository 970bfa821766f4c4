"""Reading a stored sequence column back (`seq_<feature>`): what the tests check the extractor
and the MERTools import wrote. No stage reads sequences whole; export streams them
(`ecmf.features.mertools_out`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecmf import schema
from ecmf.errors import UnknownName
from ecmf.features.sequence import sequence_shape, sequence_to_numpy
from ecmf.features.store import _dataset, _error_free_rows


def read_sequences(store: str | Path, name: str,
                   ids: list[str] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frame-level sequence of feature `name` for the error-free samples (all, or `ids` in that
    order) -> (ids [N], float32 [N, steps, dim]); steps and dim come from the field metadata."""

    ds = _dataset(store)
    column = schema.sequence_column(name)
    if column not in ds.schema.names:
        have = [c[len(schema.SEQUENCE_PREFIX):] for c in ds.schema.names
                if c.startswith(schema.SEQUENCE_PREFIX)]
        raise UnknownName(f"no sequence column {column!r} in store {store} (set "
                          f"extract.encoders.{name}.sequence_steps > 0); available: "
                          f"{sorted(have)}")
    steps, dim = sequence_shape(ds.schema.field(column))
    table, got = _error_free_rows(ds, [schema.SAMPLE_ID, column], ids, store, column)
    return got, sequence_to_numpy(table.column(column), steps, dim)
