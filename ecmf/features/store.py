"""The Parquet feature store: one row per clip keyed by `sample_id`, a fixed-size list per feature.

Rows whose `error` is non-empty failed a stage; readers skip them and a re-run retries them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from ecmf import schema


@dataclass
class FeatureTable:
    """Features of a set of samples, aligned by row."""

    ids: np.ndarray  # [N] str
    feats: dict[str, np.ndarray]  # name -> float32 [N, D]
    masks: dict[str, np.ndarray]  # name -> bool [N]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "FeatureTable":
        return FeatureTable(self.ids[index], {k: v[index] for k, v in self.feats.items()},
                            {k: v[index] for k, v in self.masks.items()})

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.feats.items()}


def _dataset(store: str | Path) -> pads.Dataset:
    path = Path(store)
    if not path.is_dir() or not any(path.glob("*.parquet")):
        raise FileNotFoundError(f"feature store {path} holds no Parquet files; run `ecmf extract`")
    return pads.dataset(str(path), format="parquet")


def store_dims(store: str | Path) -> dict[str, int]:
    """Feature name -> dimension, read from the store's schema."""
    sch = _dataset(store).schema
    return {name: sch.field(schema.feature_column(name)).type.list_size
            for name in schema.feature_names(sch.names)}


def list_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A fixed-size-list column as a float32 [N, D] array, without a Python loop."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dim = arr.type.list_size
    return np.asarray(arr.flatten().to_numpy(zero_copy_only=False),
                      dtype=np.float32).reshape(-1, dim)


def ok_ids(store: str | Path) -> set[str]:
    """Samples the store holds without error (what a resumed extraction skips)."""
    if not Path(store).is_dir() or not any(Path(store).glob("*.parquet")):
        return set()
    t = _dataset(store).to_table(columns=[schema.SAMPLE_ID, "error"])
    ids = t.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False)
    err = t.column("error").to_numpy(zero_copy_only=False)
    return {i for i, e in zip(ids, err) if not e}


def store_fingerprint(store: str | Path) -> str:
    """SHA-256 over the name, size and modification time of the store's Parquet files: it
    changes whenever an extraction, a resume or an import writes to the store, so results
    computed from the store (weak classifiers' probabilities) can tell they are stale."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(Path(store).glob("*.parquet")):
        st = path.stat()
        h.update(f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def store_columns(store: str | Path) -> dict[str, set[str]]:
    """Features and sequences of every Parquet file of the store: {"features": names,
    "sequences": names}, over all files (a store written by differing runs shows both sets)."""
    import pyarrow.parquet as pq

    feats: set[str] = set()
    seqs: set[str] = set()
    for path in sorted(Path(store).glob("*.parquet")):
        names = pq.read_schema(path).names
        feats.update(schema.feature_names(names))
        seqs.update(c[len(schema.SEQUENCE_PREFIX):] for c in names
                    if c.startswith(schema.SEQUENCE_PREFIX))
    return {"features": feats, "sequences": seqs}


def _error_free_rows(ds: pads.Dataset, columns: list[str], ids, store, what: str):
    """The error-free rows of `columns`, one per sample (all, or `ids` in that order) -> (table,
    ids). A resumed run may have appended a sample again: its last row wins."""
    flt = pads.field("error") == ""
    if ids is not None:
        flt = flt & pads.field(schema.SAMPLE_ID).isin(list(ids))
    table = ds.to_table(columns=columns, filter=flt)
    got = table.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False).astype(str)
    _, last = np.unique(got[::-1], return_index=True)
    order = np.sort(len(got) - 1 - last)
    if ids is not None:
        pos = {s: i for i, s in enumerate(got[order])}
        missing = [s for s in ids if s not in pos]
        if missing:
            raise KeyError(f"{len(missing)} sample(s) have no error-free {what} in {store}, "
                           f"e.g. {missing[:5]}")
        order = order[[pos[s] for s in ids]]
    return table.take(pa.array(order)), np.asarray(got[order])


def read_features(store: str | Path, features: list[str] | None = None,
                  ids: list[str] | np.ndarray | None = None) -> FeatureTable:
    """Features of the error-free samples (all, or those in `ids`, in that order)."""
    ds = _dataset(store)
    dims = store_dims(store)
    names = list(features) if features else list(dims)
    unknown = [n for n in names if n not in dims]
    if unknown:
        raise KeyError(f"feature(s) {unknown} not in store {store}; available: {sorted(dims)}")
    cols = [schema.SAMPLE_ID, "error"]
    cols += [c for n in names for c in (schema.feature_column(n), schema.mask_column(n))]
    table, got = _error_free_rows(ds, cols, ids, store, "features")
    return FeatureTable(
        ids=got,
        feats={n: list_to_numpy(table.column(schema.feature_column(n))) for n in names},
        masks={n: table.column(schema.mask_column(n)).to_numpy(zero_copy_only=False).astype(bool)
               for n in names},
    )


def store_dataset(store: str | Path, features: list[str], ids: list[str] | None = None):
    """The store's error-free rows (optionally only `ids`) as a streaming Ray Dataset."""
    import ray
    from ray.data.expressions import col

    _dataset(store)  # fail early, naming the store, if it is empty
    cols = [schema.SAMPLE_ID, "error"]
    cols += [c for f in features for c in (schema.feature_column(f), schema.mask_column(f))]
    ds = ray.data.read_parquet(str(store), columns=cols).filter(expr=col("error") == "")
    if ids is not None:
        ds = ds.filter(expr=col(schema.SAMPLE_ID).is_in(list(ids)))
    return ds.drop_columns(["error"])


def read_sequences(store: str | Path, name: str,
                   ids: list[str] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frame-level sequence of feature `name` for the error-free samples (all, or `ids` in that
    order) -> (ids [N], float32 [N, steps, dim]); steps and dim come from the field metadata."""
    from ecmf.features.sequence import sequence_shape, sequence_to_numpy

    ds = _dataset(store)
    column = schema.sequence_column(name)
    if column not in ds.schema.names:
        have = [c[len(schema.SEQUENCE_PREFIX):] for c in ds.schema.names
                if c.startswith(schema.SEQUENCE_PREFIX)]
        raise KeyError(f"no sequence column {column!r} in store {store} (set "
                       f"extract.encoders.{name}.sequence_steps > 0); available: {sorted(have)}")
    steps, dim = sequence_shape(ds.schema.field(column))
    table, got = _error_free_rows(ds, [schema.SAMPLE_ID, column], ids, store, column)
    return got, sequence_to_numpy(table.column(column), steps, dim)
