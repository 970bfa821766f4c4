"""The feature store and predictions out in MERTools' formats: `<feature>-UTT` / `-FRA` folders of
.npy files (`ecmf export-features`) and the test-result npz of class probabilities
(`emo_probs`) that MERTools' scripts read and ensemble."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from ecmf import schema
from ecmf.errors import InputError, UnknownName
from ecmf.features.sequence import sequence_shape, sequence_to_numpy
from ecmf.features.store import _dataset, list_to_numpy
from ecmf.workdir import Workdir

UTT, FRA = "utt", "fra"
# MERTools' class order (`emos_mer` in its toolkit/globals.py): the columns of its emo_probs.
MERTOOLS_LABELS = ("neutral", "angry", "happy", "sad", "worried", "surprise")


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
        raise UnknownName(f"feature(s) {unknown} not in store {store}; available: {sorted(have)}")
    out = Path(out_dir)
    seqs = {n: sequence_shape(ds.schema.field(schema.sequence_column(n))) for n in names
            if schema.sequence_column(n) in ds.schema.names}
    folders = {(n, UTT): out / f"{n}-UTT" for n in names}
    folders.update({(n, FRA): out / f"{n}-FRA" for n in seqs})
    for folder in folders.values():
        if folder.exists() and any(folder.iterdir()):
            if not overwrite:
                raise InputError(f"{folder} is not empty: stale files would mix with this export; "
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
                raise InputError(f"sample id {sid!r} in {store} cannot be a file name")
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


def export_stage(cfg, out: str | Path, features: list[str] | None = None,
                 overwrite: bool = False) -> dict:
    """`ecmf export-features`: the workdir's store as MERTools folders under `out`."""

    return export_mertools(Workdir.of(cfg).store, out, features, overwrite)


def write_emo_probs(path: str | Path, names, probs: np.ndarray,
                    labels=schema.LABELS) -> Path:
    """Save class probabilities as MERTools saves a test set's predictions (its main-release.py:
    `np.savez_compressed(..., emo_probs=...)`, read back by submission.py as
    `np.load(f, allow_pickle=True)['emo_probs']`): `emo_probs` float32 [N, 6], rows in `names`'
    order, columns in MERTools' class order. `names` and `labels` are saved too (plain string
    arrays, no pickle); MERTools' pickled `args` is not."""
    probs = np.asarray(probs, dtype=np.float32)
    names = [str(n) for n in names]
    labels = [str(c) for c in labels]
    if sorted(labels) != sorted(MERTOOLS_LABELS):
        raise InputError(f"emo_probs: classes {labels} are not MERTools' {list(MERTOOLS_LABELS)}")
    if probs.shape != (len(names), len(labels)):
        raise InputError(f"emo_probs: probabilities of shape {probs.shape} for {len(names)} "
                         f"names and {len(labels)} classes")
    probs = probs[:, [labels.index(c) for c in MERTOOLS_LABELS]]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npz")  # whole or not at all, as the store's files
    np.savez_compressed(tmp, emo_probs=probs, names=np.array(names, dtype=str),
                        labels=np.array(MERTOOLS_LABELS, dtype=str))
    os.replace(tmp, path)
    return path
