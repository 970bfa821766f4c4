"""MERTools feature folders into the Parquet feature store (`ecmf import-features`).

MERTools writes one .npy per clip: `<model>-UTT/<name>.npy` (utterance vector, [D] or [1, D]) and
`<model>-FRA/<name>.npy` (frame-level, [T, D]). Imported, an UTT folder becomes `feat_<name>`; a
FRA folder becomes `seq_<name>` pooled to a fixed number of steps, and `feat_<name>` (its mean over
time, MERTools' own utterance pooling) unless an UTT folder of the same feature is given too.
A whole MERTools feature tree imports at once (`find_tree`); imported features join the ones a
store already holds. Reading the folders is `ecmf.features.mertools_folders`; the way back out
(folders, predictions) is `ecmf.features.mertools_out`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecmf import schema
from ecmf.data.manifest import build_manifest
from ecmf.errors import InputError
from ecmf.features.mertools_folders import (
    FRA,
    UTT,
    BadFeatureFile,
    Source,
    find_tree,
    open_sources,
    parse_sources,
)
from ecmf.features.sequence import pool_steps, sequence_field
from ecmf.features.store import (
    _store_error,
    check_one_row_per_sample,
    compact_store,
    error_rows,
    part_name,
    run_stamp,
    status_table,
    write_part,
)
from ecmf.workdir import Workdir, save_config, write_json

log = logging.getLogger(__name__)

STAGE = "import"
DEFAULT_STEPS = 16  # sequence steps of a FRA folder when neither the call nor the config says
CHUNK_ROWS = 4096  # rows per Parquet file of the store: the most held in memory at once
PROGRESS_S = 5.0  # seconds between progress lines where no terminal shows a bar
EXAMPLES = 5  # sample names shown of a count


class _Progress:
    """Clips done of `total`, with rate and ETA, on stderr: a tqdm bar on a terminal (where tqdm
    is installed), else a log line every PROGRESS_S seconds and at the end."""

    def __init__(self, total: int, per_clip: int):
        self.total, self.per_clip = total, max(1, per_clip)
        self.files = 0
        self.start = self.last = time.time()
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, unit="clip", desc=STAGE, file=sys.stderr)

    def file_done(self) -> None:
        self.files += 1
        done = self.files // self.per_clip
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif time.time() - self.last >= PROGRESS_S:
            self._log(done)

    def _log(self, done: int, end: bool = False) -> None:
        self.last = now = time.time()
        rate = done / max(now - self.start, 1e-9)
        when = f"in {now - self.start:.1f} s" if end else \
            f"about {(self.total - done) / rate:.0f} s left" if rate > 0 else "starting"
        log.info("import: %d of %d clips (%.0f/s, %s)", done, self.total, rate, when)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
        else:
            self._log(self.total, end=True)


def _new_fields(sources: dict[str, dict[str, Source]], steps: dict[str, int]) -> list[pa.Field]:
    fields = []
    for feature, kinds in sources.items():
        dim = (kinds.get(UTT) or kinds[FRA]).dim
        fields.append(pa.field(schema.feature_column(feature), pa.list_(pa.float32(), dim)))
        fields.append(pa.field(schema.mask_column(feature), pa.bool_()))
        fields.append(pa.field(schema.status_column(feature), pa.string()))
        if FRA in kinds:
            fields.append(sequence_field(feature, steps[feature], kinds[FRA].dim))
    return fields


def _columns_of(feature: str) -> set[str]:
    return {schema.feature_column(feature), schema.mask_column(feature),
            schema.status_column(feature), schema.sequence_column(feature)}


def _existing(store: Path, features, overwrite: bool) -> tuple[list[Path], pa.Schema | None]:
    """The store files imported features join, with their schema less the columns replaced;
    ([], None) where the import makes the store anew (none yet, or every feature replaced)."""
    files = sorted(store.glob("*.parquet")) if store.is_dir() else []
    if not files:
        return [], None
    try:
        sch = pa.unify_schemas([pq.read_schema(f) for f in files])
    except (pa.ArrowInvalid, OSError) as e:
        raise _store_error(store, e) from None
    have = schema.feature_names(sch.names)
    clash = [f for f in features if f in have]
    if (clash or not have) and not overwrite:
        what = f"already holds feature(s) {clash}" if clash else "is not empty"
        raise InputError(f"feature store {store} {what}: pass --overwrite to replace "
                         f"{'them' if clash else 'it'}, or import under another name")
    if set(have) <= set(features):
        return [], None
    if compact_store(store):  # a resumed extraction may have stored a sample twice
        files = sorted(store.glob("*.parquet"))
    drop = set().union(*(_columns_of(f) for f in clash))
    return files, pa.schema([f for f in sch if f.name not in drop], metadata=sch.metadata)


def _blank(field: pa.Field, n: int) -> pa.Array:
    """`n` rows of a column a table lacks: zeros (mask False) and "" — absent, nothing failed."""
    t = field.type
    if pa.types.is_fixed_size_list(t):
        zeros = pa.array(np.zeros(n * t.list_size, np.float32)).cast(t.value_type)
        return pa.FixedSizeListArray.from_arrays(zeros, t.list_size)
    if pa.types.is_boolean(t):
        return pa.array(np.zeros(n, dtype=bool))
    if pa.types.is_string(t):
        return pa.array([""] * n, pa.string())
    return pa.nulls(n, t)


def _read_features(names: list[str], sources, steps, pool, progress) -> dict[str, pa.Array]:
    """The imported columns (feat_, mask_, status_, seq_) of `names`."""
    n = len(names)
    out: dict[str, pa.Array] = {}
    for feature, kinds in sources.items():
        feat = np.zeros((n, (kinds.get(UTT) or kinds[FRA]).dim), np.float32)
        seq = np.zeros((n, steps[feature], kinds[FRA].dim), np.float32) if FRA in kinds else None
        mask = np.ones(n, dtype=bool)
        status = [""] * n
        for kind, src in kinds.items():
            for i, x in enumerate(pool.map(lambda s, src=src: _try_load(src, s), names)):
                progress.file_done()
                if isinstance(x, BadFeatureFile):
                    status[i] = status[i] or f"{STAGE}: {x}"
                    mask[i] = False
                elif x is None:
                    mask[i] = False
                elif kind == FRA:
                    seq[i] = pool_steps(x, steps[feature])
                    if UTT not in kinds:
                        feat[i] = x.mean(axis=0, dtype=np.float64)
                else:
                    feat[i] = x
        # Half of a UTT+FRA pair is not enough: the modality counts as missing.
        feat[~mask] = 0.0
        out[schema.feature_column(feature)] = pa.FixedSizeListArray.from_arrays(
            pa.array(feat.reshape(-1)), feat.shape[1])
        out[schema.mask_column(feature)] = pa.array(mask)
        out[schema.status_column(feature)] = pa.array(status, pa.string())
        if seq is not None:
            seq[~mask] = 0.0
            out[schema.sequence_column(feature)] = pa.FixedSizeListArray.from_arrays(
                pa.array(seq.reshape(-1)), seq.shape[1] * seq.shape[2])
    return out


def _rows(names: list[str], base: pa.Table | None, sources, steps, sch: pa.Schema, pool,
          progress) -> pa.Table:
    """Store rows of `names` in schema `sch`: the imported columns joined to `base` (the rows a
    store already holds for them, in that order; None for clips new to the store)."""
    n = len(names)
    cols = _read_features(names, sources, steps, pool, progress)
    if base is not None:
        cols.update({c: base.column(c).cast(sch.field(c).type) for c in base.column_names
                     if c in sch.names and c not in cols})
    cols[schema.SAMPLE_ID] = pa.array(names, pa.string())
    arrays = [cols[f.name] if f.name in cols else _blank(f, n) for f in sch]
    table = pa.Table.from_arrays(arrays, schema=sch)
    # "error" is non-empty only where no modality could be read: one that is read now clears
    # an earlier error (the failed modality keeps its reason in its status column).
    read = np.zeros(n, dtype=bool)
    for c in (c for c in sch.names if c.startswith(schema.MASK_PREFIX)):
        read |= table.column(c).to_numpy(zero_copy_only=False).astype(bool)
    statuses = {c[len(schema.STATUS_PREFIX):]: table.column(c).to_pylist()
                for c in sch.names if c.startswith(schema.STATUS_PREFIX)}
    errors = table.column(schema.ERROR).to_pylist()
    for i in range(n):
        if read[i]:
            errors[i] = ""
        else:
            failed = [f"{f}: {s[i]}" for f, s in statuses.items() if s[i]]
            errors[i] = "; ".join(failed) or errors[i] or ""
    return table.set_column(sch.get_field_index(schema.ERROR), schema.ERROR,
                            pa.array(errors, pa.string()))


def _try_load(src: Source, name: str):
    try:
        return src.load(name)
    except BadFeatureFile as e:
        return e


def _used(table: pa.Table, sources) -> np.ndarray:
    """Rows where an imported feature was read or failed: the rest imported nothing."""
    used = np.zeros(table.num_rows, dtype=bool)
    for f in sources:
        used |= table.column(schema.mask_column(f)).to_numpy(zero_copy_only=False).astype(bool)
        used |= np.asarray(pc.not_equal(table.column(schema.status_column(f)), ""))
    return used


def _swap(tmp: Path, store: Path) -> None:
    """`tmp` becomes `store`; the store it replaces is removed only once that is done."""
    aside = store.with_name(store.name + ".replaced")
    shutil.rmtree(aside, ignore_errors=True)
    if store.exists():
        store.rename(aside)
    tmp.rename(store)
    shutil.rmtree(aside, ignore_errors=True)


def import_mertools(folders: dict[str, str | Path | list], store: str | Path,
                    steps: int | dict[str, int] = DEFAULT_STEPS, ids: list[str] | None = None,
                    overwrite: bool = False, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Import MERTools feature folders (feature -> folder, or its -UTT and -FRA folders) into
    the feature store at `store`, in chunks of `chunk_rows` samples.

    Samples are `ids` (e.g. the manifest's) or every file name found. A sample with no file in
    any folder is not imported (no row; counted as `not_imported`). A sample missing from one
    feature's folder gets zeros and mask False for it; an unreadable or mis-shaped file masks
    its feature with the file and expected shape in `status_<feature>`, and the sample is an
    error row only when none of its features could be read.

    A store that already holds other features (extracted, or imported before) keeps them: the
    imported columns join its rows by sample_id, a clip it lacks gets a row of its own. A
    feature it already holds is replaced only with `overwrite` (the whole store where every
    feature of it is replaced). Returns counts and the store's errors table (sample_id,
    feature, stage, reason).
    """
    start = time.time()
    store = Path(store)
    sources = open_sources(folders)
    steps = {f: int(steps[f] if isinstance(steps, dict) else steps) for f in sources}
    for f, s in steps.items():
        if s < 1:
            raise InputError(f"feature {f!r}: sequence steps must be >= 1, got {s}")
    old_files, base = _existing(store, sources, overwrite)
    new = _new_fields(sources, steps)
    fields = [pa.field(schema.SAMPLE_ID, pa.string())] if base is None else \
        [f for f in base if f.name != schema.ERROR]
    sch = pa.schema([*fields, *new, pa.field(schema.ERROR, pa.string())],
                    metadata=base.metadata if base is not None else None)

    names_found = set().union(*(s.files for k in sources.values() for s in k.values()))
    names = list(ids) if ids is not None else sorted(names_found)
    old_ids = [pq.read_table(f, columns=[schema.SAMPLE_ID]).column(0).to_pylist()
               for f in old_files]
    in_store = set().union(*old_ids)
    todo = [n for n in names if n in names_found and n not in in_store]
    tmp = store.with_name(store.name + ".importing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    wanted = set(names)
    used_ids: list[str] = []
    counts = {f: Counter() for f in sources}
    failed = 0

    def tally(table: pa.Table) -> np.ndarray:
        """Count the rows of `names` that imported something; -> which rows did."""
        nonlocal failed
        used = _used(table, sources)
        ids_ = np.asarray(table.column(schema.SAMPLE_ID).to_pylist(), dtype=object)
        mine = used & np.fromiter((i in wanted for i in ids_), bool, len(ids_))
        used_ids.extend(ids_[mine])
        failed += int(np.asarray(pc.not_equal(table.column(schema.ERROR), ""))[mine].sum())
        for f in sources:
            m = table.column(schema.mask_column(f)).to_numpy(zero_copy_only=False)[mine]
            bad = np.asarray(pc.not_equal(table.column(schema.status_column(f)), ""))[mine]
            counts[f].update(present=int(m.sum()), bad=int(bad.sum()),
                             missing=int((~m & ~bad).sum()))
        return used

    n_files = sum(len(k) for k in sources.values())
    progress = _Progress(len(todo) + sum(map(len, old_ids)), n_files)
    run = run_stamp()
    with ThreadPoolExecutor(8) as pool:  # file reads wait on the disk, not the GIL
        for path, ids_ in zip(old_files, old_ids):  # join the rows the store holds
            table = _rows(ids_, pq.read_table(path), sources, steps, sch, pool, progress)
            tally(table)
            write_part(table, tmp / path.name)
        for k, s in enumerate(range(0, len(todo), chunk_rows)):  # and add clips new to it
            table = _rows(todo[s:s + chunk_rows], None, sources, steps, sch, pool, progress)
            table = table.filter(pa.array(tally(table)))  # a half UTT+FRA pair only: no row
            if table.num_rows:
                write_part(table, tmp / part_name(run, k))
    progress.close()
    check_one_row_per_sample(tmp)
    _swap(tmp, store)

    status = status_table(store)
    errors = error_rows(status if status is not None else
                        pd.DataFrame(columns=[schema.SAMPLE_ID, schema.ERROR]))
    got = set(used_ids)
    not_imported = [n for n in names if n not in got]
    features = {}
    for f, kinds in sources.items():
        features[f] = {"dim": (kinds.get(UTT) or kinds[FRA]).dim,
                       **{kind: str(src.folder) for kind, src in kinds.items()},
                       "steps": steps[f] if FRA in kinds else None,
                       "present": counts[f]["present"], "bad_files": counts[f]["bad"],
                       "missing": counts[f]["missing"]}
    summary = {"samples": len(names), "imported": len(got) - failed, "failed": failed,
               "not_imported": len(not_imported),
               "not_imported_examples": sorted(not_imported)[:EXAMPLES],
               "features": features,
               "kept_features": [f for f in schema.feature_names(sch.names) if f not in sources],
               "not_in_ids": len(names_found - wanted) if ids is not None else 0,
               "seconds": round(time.time() - start, 2), "store": str(store)}
    if not_imported:
        log.info("import: %d of %d clips have no file in the feature folders (or half a "
                 "UTT+FRA pair) and were not imported, e.g. %s", len(not_imported), len(names),
                 summary["not_imported_examples"])
    return {"summary": summary, "errors": errors}


def _steps_of(cfg, features, steps: int | None) -> dict[str, int]:
    """Sequence steps per feature: the call's, else extract.encoders.<name>.sequence_steps."""
    out = {}
    for f in features:
        enc = cfg.extract.encoders.get(f)
        configured = int(getattr(enc, "sequence_steps", 0) or 0) if enc is not None else 0
        out[f] = steps or configured or DEFAULT_STEPS
    return out


def import_stage(cfg, sources: list[str] | None = None, steps: int | None = None,
                 overwrite: bool = False, mertools: str | None = None) -> dict:
    """`ecmf import-features`: MERTools folders (every one of the tree `mertools`, and the
    `--from` items `sources`) into `<workdir>/features/store`, keyed by the corpus's manifest
    when the config names a corpus (else by every file name found)."""

    wd = Workdir.of(cfg)
    folders, empty = find_tree(mertools) if mertools else ({}, [])
    for feature, paths in parse_sources(sources or []).items():
        folders.setdefault(feature, []).extend(paths)
    if not folders:
        raise InputError("give --mertools DIR or at least one --from FEATURE=FOLDER (a MERTools "
                         "-UTT or -FRA folder)")
    ids = None
    if cfg.corpus.root or cfg.corpus.manifest:
        ids = build_manifest(cfg)[schema.SAMPLE_ID].tolist()
    result = import_mertools(folders, wd.store, _steps_of(cfg, folders, steps), ids, overwrite)
    result["errors"].to_parquet(wd.errors, index=False)
    save_config(cfg, wd.features)
    summary = {**result["summary"], "errors": str(wd.errors)}
    if empty:
        summary["empty_folders"] = [str(p) for p in empty]
    write_json(wd.features / "import_summary.json", summary)
    log.info("import: %d samples, %d imported, %d not imported (no file), %d failed (%s)",
             summary["samples"], summary["imported"], summary["not_imported"],
             summary["failed"], wd.errors)
    return summary
