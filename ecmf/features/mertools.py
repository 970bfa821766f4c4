"""MERTools feature folders in and out of the Parquet feature store, without extracting again.

MERTools writes one .npy per clip: `<model>-UTT/<name>.npy` (utterance vector, [D] or [1, D]) and
`<model>-FRA/<name>.npy` (frame-level, [T, D]). Imported, an UTT folder becomes `feat_<name>`; a
FRA folder becomes `seq_<name>` pooled to a fixed number of steps, and `feat_<name>` (its mean over
time, MERTools' own utterance pooling) unless an UTT folder of the same feature is given too.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecmf import schema
from ecmf.features.sequence import pool_steps, sequence_field, sequence_shape, sequence_to_numpy
from ecmf.features.store import _dataset, check_one_row_per_sample, error_rows, list_to_numpy

log = logging.getLogger(__name__)

UTT, FRA = "utt", "fra"
STAGE = "import"
DEFAULT_STEPS = 16  # sequence steps of a FRA folder when neither the call nor the config says
CHUNK_ROWS = 4096  # rows per Parquet file of the store: the most held in memory at once
NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file
PROBE_FILES = 32  # files read to find a folder's dimension (the most common one wins)


class BadFeatureFile(ValueError):
    """A .npy that cannot be read or has the wrong shape; the message names file and shape."""


@dataclass
class Source:
    """One MERTools folder of feature `feature`: its kind, files by sample name and dimension."""

    feature: str
    folder: Path
    kind: str
    files: dict[str, Path]
    dim: int

    def expected(self) -> str:
        return f"({self.dim},) or (1, {self.dim})" if self.kind == UTT else f"(T, {self.dim})"

    def load(self, name: str) -> np.ndarray | None:
        """float32 [D] (UTT) or [T, D] (FRA) of sample `name`; None when it has no file here."""
        path = self.files.get(name)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                head = f.read(len(NPY_MAGIC))
        except OSError as e:
            raise BadFeatureFile(f"{path}: cannot be opened ({e})") from None
        if head != NPY_MAGIC:  # np.load would call it pickled data, which misleads
            raise BadFeatureFile(f"{path}: not a NumPy .npy file (it starts with {head!r}, not "
                                 f"{NPY_MAGIC!r}); expected a float array of shape "
                                 f"{self.expected()} saved with numpy.save")
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:  # truncated, pickled objects: all unreadable to us
            raise BadFeatureFile(f"{path}: unreadable ({type(e).__name__}: {e}); expected a "
                                 f"float array of shape {self.expected()}") from None
        ok = np.issubdtype(x.dtype, np.number) and x.shape[-1:] == (self.dim,)
        if self.kind == UTT:
            ok = ok and (x.ndim == 1 or (x.ndim == 2 and x.shape[0] == 1))
        else:
            ok = ok and x.ndim == 2 and x.shape[0] > 0
        if not ok:
            raise BadFeatureFile(f"{path}: shape {x.shape} dtype {x.dtype}; expected shape "
                                 f"{self.expected()} like the rest of {self.folder}")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise BadFeatureFile(f"{path}: holds NaN or infinite values")
        return x.reshape(-1) if self.kind == UTT else x


def parse_sources(items: list[str]) -> dict[str, list[Path]]:
    """`feature=FOLDER` items (as `--from` takes them) -> feature -> its folders."""
    out: dict[str, list[Path]] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        name = name.strip()
        if not sep or not name or not folder.strip():
            raise ValueError(f"--from {item!r}: expected FEATURE=FOLDER, e.g. "
                             f"audio=features/chinese-hubert-large-UTT")
        out.setdefault(name, []).append(Path(folder.strip()).expanduser())
    return out


def _list_npy(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"feature folder {folder} does not exist")
    with os.scandir(folder) as it:
        files = {Path(e.name).stem: Path(e.path) for e in it
                 if e.name.endswith(".npy") and e.is_file()}
    if not files:
        raise FileNotFoundError(f"feature folder {folder} holds no .npy files")
    return files


def _probe(feature: str, folder: Path, files: dict[str, Path]) -> Source:
    """Kind (from the folder's -UTT/-FRA suffix, else the arrays' shape) and dimension."""
    shapes = []
    for name in sorted(files)[:PROBE_FILES]:
        try:
            shapes.append(np.load(files[name], mmap_mode="r", allow_pickle=False).shape)
        except Exception:  # noqa: BLE001 - a corrupt file is reported when it is imported
            continue
    shapes = [s for s in shapes if len(s) in (1, 2) and s[-1] > 0]
    if not shapes:
        raise ValueError(f"feature folder {folder}: none of its first {PROBE_FILES} .npy files "
                         f"holds a [D] or [T, D] array")
    suffix = folder.name.upper()
    if suffix.endswith("-UTT"):
        kind = UTT
    elif suffix.endswith("-FRA"):
        kind = FRA
    else:  # no MERTools suffix: utterance vectors are 1-D or a single row
        kind = UTT if all(len(s) == 1 or s[0] == 1 for s in shapes) else FRA
    dim = Counter(s[-1] for s in shapes).most_common(1)[0][0]
    return Source(feature, folder, kind, files, int(dim))


def open_sources(folders: dict[str, str | Path | list]) -> dict[str, dict[str, Source]]:
    """feature -> {"utt": Source, "fra": Source} (either or both) for `folders`."""
    out: dict[str, dict[str, Source]] = {}
    for feature, given in folders.items():
        paths = [Path(p) for p in (given if isinstance(given, (list, tuple)) else [given])]
        for path in paths:
            src = _probe(feature, path, _list_npy(path))
            if src.kind in out.setdefault(feature, {}):
                raise ValueError(f"feature {feature!r}: two {src.kind.upper()} folders "
                                 f"({out[feature][src.kind].folder} and {path}); give one "
                                 f"utterance (-UTT) and at most one frame-level (-FRA) folder")
            out[feature][src.kind] = src
    if not out:
        raise ValueError("no feature folders given (--from FEATURE=FOLDER)")
    return out


def _store_schema(sources: dict[str, dict[str, Source]], steps: dict[str, int]) -> pa.Schema:
    fields = [pa.field(schema.SAMPLE_ID, pa.string())]
    for feature, kinds in sources.items():
        dim = (kinds.get(UTT) or kinds[FRA]).dim
        fields.append(pa.field(schema.feature_column(feature), pa.list_(pa.float32(), dim)))
        fields.append(pa.field(schema.mask_column(feature), pa.bool_()))
        fields.append(pa.field(schema.status_column(feature), pa.string()))
        if FRA in kinds:
            fields.append(sequence_field(feature, steps[feature], kinds[FRA].dim))
    fields.append(pa.field("error", pa.string()))
    return pa.schema(fields)


def _chunk_table(names: list[str], sources, steps, sch: pa.Schema, pool: ThreadPoolExecutor,
                 counts: dict) -> pa.Table:
    n = len(names)
    cols: dict[str, tuple] = {}  # feature -> (feat, mask, status, seq or None)
    for feature, kinds in sources.items():
        feat = np.zeros((n, (kinds.get(UTT) or kinds[FRA]).dim), np.float32)
        seq = np.zeros((n, steps[feature], kinds[FRA].dim), np.float32) if FRA in kinds else None
        mask = np.ones(n, dtype=bool)
        bad_file = np.zeros(n, dtype=bool)
        status = [""] * n
        for kind, src in kinds.items():
            for i, x in enumerate(pool.map(lambda s, src=src: _try_load(src, s), names)):
                if isinstance(x, BadFeatureFile):
                    status[i] = status[i] or f"{STAGE}: {x}"
                    bad_file[i] = True
                    mask[i] = False
                elif x is None:
                    mask[i] = False
                else:
                    if kind == FRA:
                        seq[i] = pool_steps(x, steps[feature])
                        if UTT not in kinds:
                            feat[i] = x.mean(axis=0, dtype=np.float64)
                    else:
                        feat[i] = x
        # Half of a UTT+FRA pair is not enough: the modality counts as missing.
        feat[~mask] = 0.0
        if seq is not None:
            seq[~mask] = 0.0
        cols[feature] = (feat, mask, status, seq)
        counts[feature]["present"] += int(mask.sum())
        counts[feature]["bad"] += int(bad_file.sum())
        counts[feature]["missing"] += int((~mask & ~bad_file).sum())
    # A clip is an error row only when no feature of it could be read; a bad file of one
    # feature masks that feature alone (its status says why).
    errors = [""] * n
    for i in np.flatnonzero(~(np.any([c[1] for c in cols.values()], axis=0))):
        reasons = [f"{f}: {c[2][i]}" for f, c in cols.items() if c[2][i]]
        errors[i] = "; ".join(reasons) or f"{STAGE}: no .npy file for this sample in any " \
                                           f"feature folder"
    arrays = [pa.array(names, pa.string())]
    for feature, (feat, mask, status, seq) in cols.items():
        arrays += [pa.FixedSizeListArray.from_arrays(pa.array(feat.reshape(-1)), feat.shape[1]),
                   pa.array(mask), pa.array(status, pa.string())]
        if seq is not None:
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(seq.reshape(-1)),
                                                            seq.shape[1] * seq.shape[2]))
    arrays.append(pa.array(errors, pa.string()))
    return pa.Table.from_arrays(arrays, schema=sch)


def _try_load(src: Source, name: str):
    try:
        return src.load(name)
    except BadFeatureFile as e:
        return e


def import_mertools(folders: dict[str, str | Path | list], store: str | Path,
                    steps: int | dict[str, int] = DEFAULT_STEPS, ids: list[str] | None = None,
                    overwrite: bool = False, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Import MERTools feature folders (feature -> folder, or its -UTT and -FRA folders) into a
    new feature store at `store`, in chunks of `chunk_rows` samples.

    Samples are `ids` (e.g. the manifest's) or every file name found. A sample missing from a
    feature's folder gets zeros and mask False for it; a sample with an unreadable or mis-shaped
    file, or with no file at all, becomes an error row naming the file and the expected shape.
    Returns counts; the error rows are in `errors` (sample_id, stage, reason).
    """
    start = time.time()
    store = Path(store)
    if store.exists() and any(store.iterdir()) and not overwrite:
        raise ValueError(f"feature store {store} is not empty; importing would mix two stores: "
                         f"pass --overwrite to replace it, or use another workdir")
    sources = open_sources(folders)
    steps = {f: int(steps[f] if isinstance(steps, dict) else steps) for f in sources}
    for f, s in steps.items():
        if s < 1:
            raise ValueError(f"feature {f!r}: sequence steps must be >= 1, got {s}")
    names_found = sorted(set().union(*(s.files for k in sources.values() for s in k.values())))
    names = list(ids) if ids is not None else names_found
    sch = _store_schema(sources, steps)
    counts = {f: {"present": 0, "bad": 0, "missing": 0} for f in sources}
    tmp = store.with_name(store.name + ".importing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    errors, failed = [], 0
    with ThreadPoolExecutor(8) as pool:  # file reads wait on the disk, not the GIL
        for k, s in enumerate(range(0, len(names), chunk_rows)):
            table = _chunk_table(names[s:s + chunk_rows], sources, steps, sch, pool, counts)
            pq.write_table(table, tmp / f"part-{k:05d}.parquet")
            status = table.select([c for c in table.column_names if c == schema.SAMPLE_ID
                                   or c == schema.ERROR or c.startswith(schema.STATUS_PREFIX)])
            errors.append(error_rows(status.to_pandas()))
            failed += int(pc.sum(pc.not_equal(table.column(schema.ERROR), "")).as_py() or 0)
            log.info("import: %d of %d samples", min(s + chunk_rows, len(names)), len(names))
    check_one_row_per_sample(tmp)
    if store.exists():
        shutil.rmtree(store)
    tmp.rename(store)
    table = pd.concat(errors, ignore_index=True) if errors else error_rows(pd.DataFrame(
        columns=[schema.SAMPLE_ID, schema.ERROR]))
    features = {}
    for f, kinds in sources.items():
        features[f] = {"dim": (kinds.get(UTT) or kinds[FRA]).dim,
                       **{kind: str(src.folder) for kind, src in kinds.items()},
                       "steps": steps[f] if FRA in kinds else None,
                       "present": counts[f]["present"], "bad_files": counts[f]["bad"],
                       "missing": counts[f]["missing"]}
    summary = {"samples": len(names), "imported": len(names) - failed,
               "failed": failed, "features": features,
               "not_in_ids": len(set(names_found) - set(names)) if ids is not None else 0,
               "seconds": round(time.time() - start, 2), "store": str(store)}
    return {"summary": summary, "errors": table}


def export_mertools(store: str | Path, out_dir: str | Path, features: list[str] | None = None,
                    overwrite: bool = False) -> dict:
    """Write the store's error-free samples as MERTools folders: `<out>/<feature>-UTT/<id>.npy`
    ([D] float32) and, for sequence columns, `<out>/<feature>-FRA/<id>.npy` ([steps, D]).

    A sample whose mask is False gets no file, as MERTools marks a missing modality. Streams the
    store file by file; where a resumed run stored a sample twice, its last error-free row wins.
    """
    ds = _dataset(store)
    have = schema.feature_names(ds.schema.names)
    names = list(features) if features else have
    unknown = [n for n in names if n not in have]
    if unknown:
        raise KeyError(f"feature(s) {unknown} not in store {store}; available: {sorted(have)}")
    out = Path(out_dir)
    seqs = {n: sequence_shape(ds.schema.field(schema.sequence_column(n))) for n in names
            if schema.sequence_column(n) in ds.schema.names}
    folders = {(n, UTT): out / f"{n}-UTT" for n in names}
    folders.update({(n, FRA): out / f"{n}-FRA" for n in seqs})
    for folder in folders.values():
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise ValueError(f"{folder} is not empty: stale files would mix with this export; "
                                 f"pass --overwrite to replace it")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
    columns = [schema.SAMPLE_ID, "error"]
    columns += [c for n in names for c in (schema.feature_column(n), schema.mask_column(n))]
    columns += [schema.sequence_column(n) for n in seqs]
    written = {f"{n}-{k.upper()}": 0 for n, k in folders}
    seen: set[str] = set()
    # Newest file first and rows backwards: the first error-free row met is a sample's last one.
    for fragment in reversed(list(ds.get_fragments())):
        t = fragment.to_table(columns=columns, schema=ds.schema)
        t = t.filter(pc.equal(t.column("error"), ""))
        ids = t.column(schema.SAMPLE_ID).to_pylist()
        arrays = {}
        for n in names:
            arrays[n] = (list_to_numpy(t.column(schema.feature_column(n))),
                         t.column(schema.mask_column(n)).to_numpy(zero_copy_only=False))
        seq = {n: sequence_to_numpy(t.column(schema.sequence_column(n)), *shape)
               for n, shape in seqs.items()}
        for i in range(len(ids) - 1, -1, -1):
            sid = ids[i]
            if sid in seen:
                continue
            seen.add(sid)
            if "/" in sid or "\\" in sid or sid in ("", ".", ".."):
                raise ValueError(f"sample id {sid!r} in {store} cannot be a file name")
            for n in names:
                feat, mask = arrays[n]
                if not mask[i]:
                    continue
                np.save(folders[(n, UTT)] / f"{sid}.npy", feat[i])
                written[f"{n}-UTT"] += 1
                if n in seq:
                    np.save(folders[(n, FRA)] / f"{sid}.npy", seq[n][i])
                    written[f"{n}-FRA"] += 1
    return {"samples": len(seen), "files": written, "out": str(out)}



def _steps_of(cfg, features, steps: int | None) -> dict[str, int]:
    """Sequence steps per feature: the call's, else extract.encoders.<name>.sequence_steps."""
    out = {}
    for f in features:
        enc = cfg.extract.encoders.get(f)
        configured = int(getattr(enc, "sequence_steps", 0) or 0) if enc is not None else 0
        out[f] = steps or configured or DEFAULT_STEPS
    return out


def import_stage(cfg, sources: list[str], steps: int | None = None,
                 overwrite: bool = False) -> dict:
    """`ecmf import-features`: MERTools folders into `<workdir>/features/store`, keyed by the
    corpus's manifest when the config names a corpus (else by every file name found)."""
    from ecmf.workdir import Workdir, build_manifest, save_config, write_json

    wd = Workdir.of(cfg)
    folders = parse_sources(sources)
    ids = None
    if cfg.corpus.root or cfg.corpus.manifest:
        ids = build_manifest(cfg)[schema.SAMPLE_ID].tolist()
    result = import_mertools(folders, wd.store, _steps_of(cfg, folders, steps), ids, overwrite)
    result["errors"].to_parquet(wd.errors, index=False)
    save_config(cfg, wd.features)
    summary = {**result["summary"], "errors": str(wd.errors)}
    write_json(wd.features / "import_summary.json", summary)
    log.info("import: %d samples, %d failed (%s)", summary["samples"], summary["failed"],
             wd.errors)
    return summary


def export_stage(cfg, out: str | Path, features: list[str] | None = None,
                 overwrite: bool = False) -> dict:
    """`ecmf export-features`: the workdir's store as MERTools folders under `out`."""
    from ecmf.workdir import Workdir

    return export_mertools(Workdir.of(cfg).store, out, features, overwrite)
