"""The Parquet feature store: one row per clip keyed by `sample_id`, a fixed-size list per feature.

Rows whose `error` is non-empty (no modality could be read) are skipped by readers; a modality
that failed alone has mask False and its reason in `status_<name>`. A re-run retries both.
Files appear whole (written under a hidden temporary name, then renamed); `heal_store` sets aside
a file that cannot be read, and `compact_store` keeps exactly one row per sample.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from ecmf import schema
from ecmf.errors import InputError, MissingInput, UnknownName

log = logging.getLogger(__name__)
QUARANTINE = "quarantine"  # <store>/../store-quarantine: files set aside by heal_store


@dataclass
class FeatureTable:
    """Features of a set of samples, aligned by row."""

    ids: np.ndarray  # [N] str
    feats: dict[str, np.ndarray]  # name -> float32 [N, D]
    masks: dict[str, np.ndarray]  # name -> bool [N]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> FeatureTable:
        return FeatureTable(self.ids[index], {k: v[index] for k, v in self.feats.items()},
                            {k: v[index] for k, v in self.masks.items()})

    @property
    def dims(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.feats.items()}


def _dataset(store: str | Path) -> pads.Dataset:
    path = Path(store)
    if not path.is_dir() or not any(path.glob("*.parquet")):
        raise MissingInput(f"feature store {path} holds no Parquet files; run `ecmf extract`")
    try:
        return pads.dataset(str(path), format="parquet")
    except pa.ArrowInvalid as e:
        raise _store_error(path, e) from None


class StoreFileError(InputError):
    """A store file that cannot be read; the message names it and what mends it."""


def _to_table(ds: pads.Dataset, store: str | Path, **kwargs) -> pa.Table:
    """`ds.to_table(**kwargs)`, an unreadable file named in the error."""
    try:
        return ds.to_table(**kwargs)
    except (pa.ArrowInvalid, OSError) as e:
        raise _store_error(store, e) from None


def _bad_files(store: Path) -> list[tuple[Path, Exception]]:
    """The store's Parquet files whose footer cannot be read, with why."""
    import pyarrow.parquet as pq

    bad = []
    for f in sorted(store.glob("*.parquet")):
        try:
            pq.read_metadata(f)
        except (pa.ArrowException, OSError) as e:
            bad.append((f, e))
    return bad


def _store_error(store: str | Path, error: Exception) -> StoreFileError:
    """A read of the store failed: name the file that cannot be read, where one can't."""
    bad = _bad_files(Path(store))
    if not bad:
        return StoreFileError(f"feature store {store}: {error}")
    f, e = bad[0]
    return StoreFileError(f"feature store file {f} cannot be read ({e}); `ecmf extract` sets "
                          f"it aside and extracts its samples again")


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
    """Samples the store holds without error: at least one modality of theirs was read."""
    if not Path(store).is_dir() or not any(Path(store).glob("*.parquet")):
        return set()
    t = _to_table(_dataset(store), store, columns=[schema.SAMPLE_ID, "error"])
    ids = t.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False)
    err = t.column("error").to_numpy(zero_copy_only=False)
    return {i for i, e in zip(ids, err) if not e}


def complete_ids(store: str | Path) -> set[str]:
    """Samples stored with every modality read or absent by nature: what a resumed extraction
    skips. A clip with a failed modality (e.g. an unreadable wav) is tried again."""
    t = status_table(store)
    if t is None:
        return set()
    bad = t["error"] != ""
    for c in t.columns:
        if c.startswith(schema.STATUS_PREFIX):
            bad |= t[c].fillna("") != ""
    return set(t.loc[~bad, schema.SAMPLE_ID])


def status_table(store: str | Path, extra: tuple[str, ...] = (), masks: bool = False):
    """sample_id, error, every status_<name> column (with `masks`, every mask_<name> too; and
    `extra` ones where stored) of every row as a DataFrame, over files written with or without
    them; None for an empty store."""
    import pyarrow.parquet as pq

    files = sorted(Path(store).glob("*.parquet"))
    if not files:
        return None
    try:
        sch = pa.unify_schemas([pq.read_schema(f) for f in files])
    except (pa.ArrowInvalid, OSError) as e:
        raise _store_error(store, e) from None
    prefixes = (schema.STATUS_PREFIX, schema.MASK_PREFIX) if masks else (schema.STATUS_PREFIX,)
    cols = [c for c in sch.names if c in (schema.SAMPLE_ID, "error", *extra)
            or c.startswith(prefixes)]
    ds = pads.dataset([str(f) for f in files], schema=sch, format="parquet")
    return _to_table(ds, store, columns=cols).to_pandas()


def error_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The errors table (schema.ERROR_COLUMNS) of a store's rows (`status_table`): a row per
    failed modality, and one with no feature for a failed clip that names none."""
    import pandas as pd

    rows = []
    status_cols = [c for c in table.columns if c.startswith(schema.STATUS_PREFIX)]
    table = table.fillna(dict.fromkeys((*status_cols, schema.ERROR), ""))
    for rec in table.to_dict("records"):
        failed = [(c[len(schema.STATUS_PREFIX):], rec[c]) for c in status_cols if rec[c]]
        if rec[schema.ERROR] and not failed:
            failed = [("", rec[schema.ERROR])]
        for feature, status in failed:
            stage, _, reason = str(status).partition(":")
            rows.append((rec[schema.SAMPLE_ID], feature, stage.strip(), reason.strip()))
    return pd.DataFrame(rows, columns=list(schema.ERROR_COLUMNS))


def modality_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per feature, over the usable rows (no clip error) of a `status_table` read with its mask
    columns: how many have the modality (`present`), lack it by nature (`absent`: silent audio,
    no face, empty subtitle) or could not read it (`failed`)."""
    import pandas as pd

    table = table[table[schema.ERROR].fillna("") == ""]
    out = {}
    for mask in (c for c in table.columns if c.startswith(schema.MASK_PREFIX)):
        name = mask[len(schema.MASK_PREFIX):]
        status = table.get(schema.status_column(name), pd.Series("", index=table.index))
        failed = status.fillna("") != ""
        present = table[mask].fillna(False).astype(bool)
        out[name] = {"present": int(present.sum()), "absent": int((~present & ~failed).sum()),
                     "failed": int(failed.sum())}
    return out


def usage_counts(store: str | Path, ids) -> dict:
    """What a stage really uses of the clips `ids`: how many have features in the store, how
    many do not (no row, or no modality read), and `modality_counts` over the former."""
    ids = set(map(str, ids))
    table = status_table(store, masks=True)
    if table is None:
        return {"with_features": 0, "without_features": len(ids), "modalities": {}}
    table = table[table[schema.SAMPLE_ID].isin(ids)]
    usable = int((table[schema.ERROR].fillna("") == "").sum())
    return {"with_features": usable, "without_features": len(ids) - usable,
            "modalities": modality_counts(table)}


def part_name(run: str, index: int) -> str:
    """A store file's name: runs sort in time order (`run_stamp`), so a later row is newer."""
    return f"part-{run}-{index:06d}-{uuid.uuid4().hex[:8]}.parquet"


def run_stamp() -> str:
    """A sortable stamp of this run for `part_name`."""
    return time.strftime("%Y%m%dT%H%M%S") + f"{time.time_ns() % 10**9:09d}"


def write_part(table: pa.Table, path: Path) -> Path:
    """Write `table` to `path` so that the file appears whole or not at all: under a hidden
    temporary name first (readers ignore names starting with "."), then renamed."""
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def heal_store(store: str | Path) -> list[Path]:
    """Remove temporary files a killed writer left, and set aside every Parquet file that
    cannot be read (truncated, not Parquet) into `<store>-quarantine/`, naming it in a warning;
    its samples are then missing from the store and the next extraction redoes them.
    Returns where the set-aside files went."""
    store = Path(store)
    if not store.is_dir():
        return []
    for tmp in store.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    moved = []
    for path, e in _bad_files(store):
        aside = store.with_name(f"{store.name}-{QUARANTINE}")
        aside.mkdir(exist_ok=True)
        target = aside / path.name
        os.replace(path, target)
        log.warning("feature store: %s cannot be read (%s); moved to %s, its samples will "
                    "be extracted again", path, e, target)
        moved.append(target)
    return moved


def compact_store(store: str | Path) -> int:
    """Keep one row per sample. A newer row (files in name order, rows in file order) replaces
    an older one only where it reads a modality the older did not: a retry that read nothing
    more (the same unreadable file again, or a transient failure of what was read before) is
    dropped, and the older row and its file stay as they were, so a re-run with nothing new
    changes no file. Files that hold dropped rows are rewritten without them (atomically), or
    removed when nothing is left. Returns the number of rows dropped."""
    import pyarrow.parquet as pq

    files = sorted(Path(store).glob("*.parquet"))
    if not files:
        return 0
    tables = []
    for f in files:
        names = pq.read_schema(f).names
        cols = [schema.SAMPLE_ID, "error", *(c for c in names
                                             if c.startswith(schema.STATUS_PREFIX))]
        tables.append(pq.read_table(f, columns=[c for c in cols if c in names]).to_pandas())
    ids = np.concatenate([t[schema.SAMPLE_ID].to_numpy().astype(str) for t in tables])
    read = [_read_modalities(t) for t in tables]
    flat_read = [r for rows in read for r in rows]
    keep = np.ones(len(ids), dtype=bool)
    kept: dict[str, int] = {}
    for i, sid in enumerate(ids):
        j = kept.get(sid)
        if j is None:
            kept[sid] = i
        elif flat_read[i] <= flat_read[j]:  # nothing more read: the older row stays
            keep[i] = False
        else:
            keep[j] = False
            kept[sid] = i
    dropped, start = 0, 0
    for path, t in zip(files, tables):
        k = keep[start:start + len(t)]
        start += len(t)
        if k.all():
            continue
        dropped += int((~k).sum())
        if k.any():
            write_part(pq.read_table(path).filter(pa.array(k)), path)
        else:
            path.unlink()
    if dropped:
        log.info("feature store: %d row(s) of a sample stored twice dropped, the one that "
                 "read more kept", dropped)
    return dropped


def _read_modalities(table: pd.DataFrame) -> list[frozenset[str]]:
    """Per row, the modalities it read or found absent by nature (an empty status), none for
    a clip that failed whole."""
    statuses = [c for c in table.columns if c.startswith(schema.STATUS_PREFIX)]
    return [frozenset() if row.get("error") else frozenset(c for c in statuses if not row[c])
            for row in table.to_dict("records")]


def check_one_row_per_sample(store: str | Path) -> int:
    """The store's invariant: each sample_id appears once. Returns the row count."""
    t = status_table(store)
    if t is None:
        return 0
    dup = t[schema.SAMPLE_ID][t[schema.SAMPLE_ID].duplicated()].unique().tolist()
    if dup:
        raise RuntimeError(f"feature store {store}: {len(dup)} sample(s) stored more than once, "
                           f"e.g. {dup[:5]}; this is a bug in ecmf, please report it")
    return len(t)


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
    scan = {}
    if ids is not None:
        flt = flt & pads.field(schema.SAMPLE_ID).isin(list(ids))
        # A few rows of a large store: little read-ahead, or Arrow holds gigabytes of rows
        # that the filter then drops.
        scan = {"batch_readahead": 1, "fragment_readahead": 1}
    table = _to_table(ds, store, columns=columns, filter=flt, **scan)
    got = table.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False).astype(str)
    _, last = np.unique(got[::-1], return_index=True)
    order = np.sort(len(got) - 1 - last)
    if ids is not None:
        pos = {s: i for i, s in enumerate(got[order])}
        missing = [s for s in ids if s not in pos]
        if missing:
            raise UnknownName(f"{len(missing)} sample(s) have no error-free {what} in {store}, "
                              f"e.g. {missing[:5]}")
        order = order[[pos[s] for s in ids]]
    return table.take(pa.array(order)), np.asarray(got[order])


def _feature_columns(store: str | Path, names: list[str]) -> list[str]:
    """The feat_/mask_ columns of `names`, each of which the store must hold."""
    dims = store_dims(store)
    unknown = [n for n in names if n not in dims]
    if unknown:
        raise UnknownName(f"feature(s) {unknown} not in store {store}; available: {sorted(dims)}")
    return [c for n in names for c in (schema.feature_column(n), schema.mask_column(n))]


def _feature_table(ids: np.ndarray, rows, names: list[str]) -> FeatureTable:
    """A FeatureTable of `names` from a table or record batch holding their columns."""
    return FeatureTable(
        ids=ids,
        feats={n: list_to_numpy(rows.column(schema.feature_column(n))) for n in names},
        masks={n: rows.column(schema.mask_column(n)).to_numpy(zero_copy_only=False).astype(bool)
               for n in names})


def read_features(store: str | Path, features: list[str] | None = None,
                  ids: list[str] | np.ndarray | None = None) -> FeatureTable:
    """Features of the error-free samples (all, or those in `ids`, in that order)."""
    ds = _dataset(store)
    names = list(features) if features else list(store_dims(store))
    cols = [schema.SAMPLE_ID, "error", *_feature_columns(store, names)]
    table, got = _error_free_rows(ds, cols, ids, store, "features")
    return _feature_table(got, table, names)


def iter_features(store: str | Path, features: list[str], ids, batch_rows: int = 8192):
    """The features of the error-free samples among `ids`, streamed: FeatureTables of at most
    `batch_rows` rows, in store order, so that no more than a batch is held at once. A sample
    stored twice (a resumed run appended it again) comes twice, its last row last."""
    ds = _dataset(store)
    cols = [schema.SAMPLE_ID, *_feature_columns(store, features)]
    flt = (pads.field("error") == "") & pads.field(schema.SAMPLE_ID).isin(list(ids))
    try:
        # One batch of read-ahead at most: Arrow's default keeps 16 batches of 4
        # files in flight, gigabytes at the pool's width.
        batches = ds.scanner(columns=cols, filter=flt, batch_size=batch_rows,
                             batch_readahead=1, fragment_readahead=1).to_batches()
        for batch in batches:
            if batch.num_rows:
                got = batch.column(schema.SAMPLE_ID).to_numpy(zero_copy_only=False).astype(str)
                yield _feature_table(got, batch, features)
    except (OSError, pa.ArrowInvalid) as e:
        raise _store_error(store, e) from None


def store_dataset(store: str | Path, features: list[str], ids: list[str] | None = None):
    """The store's error-free rows (optionally only `ids`) as a streaming Ray Dataset."""
    import ray
    from ray.data.expressions import col

    _dataset(store)  # fail early, naming the store, if it is empty
    cols = [schema.SAMPLE_ID, "error"]
    cols += [c for f in features for c in (schema.feature_column(f), schema.mask_column(f))]
    ds = ray.data.read_parquet(str(store)).select_columns(cols).filter(expr=col("error") == "")
    if ids is not None:
        ds = ds.filter(expr=col(schema.SAMPLE_ID).is_in(list(ids)))
    return ds.drop_columns(["error"])
