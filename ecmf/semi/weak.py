"""Weak classifiers per feature set (scikit-learn), one Ray task each: out-of-fold probabilities on
the labeled set (the training folds) and fold-averaged probabilities on the unlabeled pool, with
each fold model's own top class on the pool (fold-consistent pseudo-label agreement uses those).

With fold-blind refinement (`refine.fold_blind` and `refine.enabled`), also fold-blind
probabilities on the labeled set: for fold model j, each sample outside fold j predicted by the
model fit without fold j and the sample's own fold.

Results go to `<workdir>/refine/weak_probs.parquet` (long: sample_id, source, group, part
"oof"|"pool"|"pair", train_fold, prob_*, top_f<k>), reused while the classifiers, feature sets
and folds are unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import Config
from ecmf.data.manifest import load_manifest, with_labels
from ecmf.errors import MissingInput, UnknownName
from ecmf.features.store import (
    iter_features,
    ok_ids,
    read_features,
    store_dims,
    store_fingerprint,
)
from ecmf.keys import Stamp, sha256_hex
from ecmf.registry import Registry
from ecmf.runtime import devices
from ecmf.runtime.progress import collect
from ecmf.train.fit import stage_table
from ecmf.workdir import Workdir

log = logging.getLogger(__name__)
WEAK_CLASSIFIERS: Registry[Callable[..., Any]] = Registry("weak classifier")
# Part of the key: bumped when the file's columns change, so that a file of another layout is
# fitted again instead of read.
WEAK_FORMAT = 3
# Pool rows a task reads from the store and predicts at once.
POOL_BATCH = 4096


def fold_top_column(fold: int) -> str:
    """The column of fold `fold`'s model's top class on the pool (-1: none) in
    weak_probs.parquet."""
    return f"top_f{fold}"


@WEAK_CLASSIFIERS.register("lr")
def logistic_regression(C: float = 0.05, max_iter: int = 2000, **kw):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter, **kw)


@WEAK_CLASSIFIERS.register("svm")
def calibrated_linear_svm(C: float = 0.005, cv: int = 3, **kw):
    """LinearSVC with sigmoid calibration (fewer than `cv` members in a class: fewer splits)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC

    return CalibratedClassifierCV(LinearSVC(C=C, **kw), method="sigmoid", cv=cv)


@WEAK_CLASSIFIERS.register("knn")
def nearest_neighbours(n_neighbors: int = 15, weights: str = "distance", **kw):
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=n_neighbors, weights=weights, **kw)


def design_matrix(feats: dict[str, np.ndarray], masks: dict[str, np.ndarray],
                  feature_set: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of one feature set and the rows that have any of its modalities.

    One feature alone: its vectors. Several: their concatenation plus the masks as 0/1 columns,
    so a classifier can tell a missing modality (zeros) from a present one.
    """
    x = np.concatenate([feats[f] for f in feature_set], axis=1).astype(np.float32)
    m = np.stack([masks[f] for f in feature_set], axis=1)
    if len(feature_set) > 1:
        x = np.concatenate([x, m.astype(np.float32)], axis=1)
    return x, m.any(axis=1)


def fit_folds(name: str, options: dict, x: np.ndarray, y: np.ndarray, folds: np.ndarray,
              num_classes: int) -> tuple[np.ndarray, list[tuple[int, object]]]:
    """OOF probabilities [N, C] (fold k predicted by the model fit without it) and the fold
    models, (fold, model) each; a fold whose other folds hold one class has none. Classes a
    fold never saw get 0."""
    oof = np.full((len(y), num_classes), np.nan)
    models = []
    for k in np.unique(folds):
        tr, va = folds != k, folds == k
        if name == "svm":  # calibration splits every class: a class seen once is left out
            tr &= np.bincount(y[tr], minlength=num_classes)[y] >= 2
        if len(np.unique(y[tr])) < 2:  # nothing to learn from one class
            continue
        model = _make(name, options, y[tr])
        model.fit(x[tr], y[tr])
        p = np.zeros((va.sum(), num_classes))
        p[:, model.classes_] = model.predict_proba(x[va])
        oof[va] = p
        models.append((int(k), model))
    return oof, models


def predict_folds(models: list[tuple[int, object]], x_pool: np.ndarray, num_classes: int,
                  num_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the fold models' probabilities on pool rows [M, C] (NaN without a model),
    and each fold model's top class [K, M] (-1: a tie at the top, or no model for that fold)."""
    pool = np.zeros((len(x_pool), num_classes))
    tops = np.full((num_folds, len(x_pool)), -1, dtype=np.int64)
    for k, model in models:
        pk = np.zeros((len(x_pool), num_classes))
        if len(x_pool):
            pk[:, model.classes_] = model.predict_proba(x_pool)
        pool += pk
        unique = (pk == pk.max(axis=1, keepdims=True)).sum(axis=1) == 1
        tops[k] = np.where(unique, pk.argmax(axis=1), -1)
    return (pool / len(models) if models else np.full_like(pool, np.nan)), tops


def fit_predict(name: str, options: dict, x: np.ndarray, y: np.ndarray, folds: np.ndarray,
                x_pool: np.ndarray, num_classes: int,
                num_folds: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fit_folds`, then `predict_folds` on `x_pool`: OOF [N, C], pool mean [M, C], fold tops
    [K, M] (K = `num_folds`, default the folds present)."""
    k_max = int(num_folds if num_folds is not None else (folds.max() + 1 if len(folds) else 0))
    oof, models = fit_folds(name, options, x, y, folds, num_classes)
    pool, tops = predict_folds(models, x_pool, num_classes, k_max)
    return oof, pool, tops


def fold_pairs(num_folds: int) -> list[tuple[int, int]]:
    """Every unordered pair of folds (j < m), in a fixed order: the held-out folds of the
    source models of fold-blind refinement."""
    return [(j, m) for j in range(num_folds) for m in range(j + 1, num_folds)]


def pair_oof(name: str, options: dict, x: np.ndarray, y: np.ndarray, folds: np.ndarray,
             num_classes: int, num_folds: int) -> np.ndarray:
    """Fold-blind out-of-fold probabilities [K, N, C]: entry [j, i], for a sample i of fold
    m != j, comes from the model fit without folds j and m, so it knows neither the sample's
    label nor those fold j's model is validated on. NaN where m == j, and where a pair's
    remaining folds hold fewer than two classes."""
    out = np.full((num_folds, len(y), num_classes), np.nan)
    for j, m in fold_pairs(num_folds):
        tr = (folds != j) & (folds != m)
        if name == "svm":  # calibration splits every class: a class seen once is left out
            tr &= np.bincount(y[tr], minlength=num_classes)[y] >= 2
        held = (folds == j) | (folds == m)
        if len(np.unique(y[tr])) < 2 or not held.any():
            continue
        model = _make(name, options, y[tr])
        model.fit(x[tr], y[tr])
        p = np.zeros((held.sum(), num_classes))
        p[:, model.classes_] = model.predict_proba(x[held])
        for this, other in ((j, m), (m, j)):  # fold m's samples, for fold j's model; and back
            rows = folds[held] == other
            out[this, np.flatnonzero(held)[rows]] = p[rows]
    return out


def _make(name: str, options: dict, y: np.ndarray):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    opts = dict(options)
    counts = np.bincount(y)
    if name == "knn":
        opts["n_neighbors"] = max(1, min(opts.get("n_neighbors", 15), len(y)))
    if name == "svm":
        # CalibratedClassifierCV splits each class over `cv` folds: tiny classes need fewer.
        opts["cv"] = int(max(2, min(opts.get("cv", 3), counts[counts > 0].min())))
    return make_pipeline(StandardScaler(), WEAK_CLASSIFIERS.get(name)(**opts))


def _task(name: str, options: dict, feature_set: list[str], data: dict, num_threads: int):
    """One (classifier, feature set) as a Ray task: the fold models on the labeled rows the
    driver put, then the pool read from the store here, `POOL_BATCH` rows at a time, so that
    neither the driver nor a task ever holds the whole pool (125,000 clips of MER2025 are
    about 2 GB of features)."""
    import pyarrow as pa
    from threadpoolctl import threadpool_limits

    # Each pool batch read is freed at once: Arrow's allocator keeps freed pages for a while,
    # and over the pool's batches that is gigabytes held by an idle reader.
    with contextlib.suppress(NotImplementedError):
        pa.jemalloc_set_decay_ms(0)
    pool_ids = data["pool_ids"]
    at = {s: i for i, s in enumerate(pool_ids)}
    with threadpool_limits(num_threads):
        x, have = design_matrix(data["feats"], data["masks"], feature_set)
        y, folds, k = data["y"], data["folds"], data["num_folds"]
        c = data["num_classes"]
        oof = np.full((len(y), c), np.nan)
        pool = np.full((len(pool_ids), c), np.nan)
        tops = np.full((k, len(pool_ids)), -1, dtype=np.int64)
        pairs = np.full((k, len(y), c), np.nan) if data["pairs"] else None
        if have.sum() >= 2:
            oof[have], models = fit_folds(name, options, x[have], y[have], folds[have], c)
            if pairs is not None:
                pairs[:, have] = pair_oof(name, options, x[have], y[have], folds[have], c, k)
            del x
            for batch in iter_features(data["store"], feature_set, pool_ids, POOL_BATCH):
                xp, have_pool = design_matrix(batch.feats, batch.masks, feature_set)
                rows = np.array([at[s] for s in batch.ids[have_pool]], dtype=np.int64)
                pool[rows], tops[:, rows] = predict_folds(models, xp[have_pool], c, k)
    return devices.to_host((oof, pool, tops, pairs))


def feature_sets(cfg: Config, available: list[str]) -> list[list[str]]:
    """The configured feature sets, or each training feature alone plus all of them together."""
    if cfg.refine.feature_sets:
        sets = [list(s) for s in cfg.refine.feature_sets]
    else:
        base = list(cfg.train.features) or list(available)
        sets = [[f] for f in base] + ([base] if len(base) > 1 else [])
    unknown = sorted({f for s in sets for f in s} - set(available))
    if unknown:
        raise UnknownName(f"refine.feature_sets names {unknown}, not in the feature store; "
                          f"available: {sorted(available)}")
    return sets


def weak_inputs(cfg: Config) -> tuple[list[list[str]], pd.DataFrame, list[str]]:
    """Feature sets, the labeled training table (extracted clips only) and the pool's ids."""

    wd = Workdir.of(cfg)
    sets = feature_sets(cfg, list(store_dims(wd.store)))
    manifest = load_manifest(cfg)
    cfg = with_labels(cfg, manifest)
    table = stage_table(cfg, manifest)
    have = ok_ids(wd.store)
    table = table[table[schema.SAMPLE_ID].isin(have)].reset_index(drop=True)
    pool_ids = sorted(set(manifest.loc[manifest[schema.SPLIT] != "train", schema.SAMPLE_ID])
                      & have)
    return sets, table, pool_ids


def weak_key(cfg: Config, sets: list[list[str]], table: pd.DataFrame,
             pool_ids: list[str]) -> dict:
    """What the weak probabilities depend on: classifiers, their options, feature sets, the
    labels and folds, the pool, and the store's files (a re-extraction changes them)."""

    rc = cfg.refine
    rows = table[[schema.SAMPLE_ID, "y", "fold"]].to_csv(index=False) + "\n".join(pool_ids)
    return {"format": WEAK_FORMAT, "pairs": rc.fold_blind and rc.enabled,
            "classifiers": list(rc.classifiers), "options": rc.options, "feature_sets": sets,
            "folds": cfg.train.folds, "seed": cfg.train.seed,
            "samples_sha256": sha256_hex(rows.encode()),
            "store": store_fingerprint(Workdir.of(cfg).store)}


def read_weak_probabilities(cfg: Config) -> pd.DataFrame:
    """What `ecmf refine` wrote to `refine/weak_probs.parquet` (`weak_probabilities`), checked
    against the inputs it would be fitted from now: missing or stale, it stops naming `ecmf
    refine` with what changed. Stages after refine read it and never fit it themselves."""
    wd = Workdir.of(cfg)
    path = wd.refine / "weak_probs.parquet"
    if not path.is_file():
        raise MissingInput(f"{path} is not there: run `ecmf refine` first (its weak classifiers "
                           f"vote on the pool with pseudo.min_agree {cfg.pseudo.min_agree}; "
                           f"pseudo.min_agree=0 does without them)")
    changes = Stamp(wd.refine / "weak_key.json").changes(weak_key(cfg, *weak_inputs(cfg)))
    # The fold-blind "pair" rows (refine's alone) do not change the pool's votes.
    changes = None if changes is None else [c for c in changes if not c.startswith("pairs:")]
    if changes is None or changes:
        why = "; ".join(changes or ["its key file is missing"])
        raise MissingInput(f"{path} was made from other inputs ({why}): run `ecmf refine` "
                           f"again")
    return pd.read_parquet(path)


def weak_probabilities(cfg: Config) -> pd.DataFrame:
    """OOF and pool probabilities of every (classifier, feature set), computed as Ray tasks
    (their progress logged by `ecmf.runtime.progress.collect`); reused from
    `refine/weak_probs.parquet` while `weak_key` is unchanged. With fold-blind refinement on, also
    rows of part "pair": fold model j's fold-blind probabilities (`pair_oof`) on the labeled
    samples outside fold j, `train_fold` j (-1 on other rows)."""
    import ray

    cfg = with_labels(cfg)
    rc = cfg.refine
    wd = Workdir.of(cfg)
    path = wd.refine / "weak_probs.parquet"
    sets, table, pool_ids = weak_inputs(cfg)
    key = weak_key(cfg, sets, table, pool_ids)
    stamp = Stamp(wd.refine / "weak_key.json")
    changes = stamp.changes(key) if path.is_file() else None
    if changes == []:
        return pd.read_parquet(path)
    if changes:
        log.info("weak classifiers: %s written with other inputs (%s); fitting them again",
                 path, "; ".join(changes))
    for name in rc.classifiers:
        WEAK_CLASSIFIERS.get(name)  # unknown names fail before any work, listing known ones

    needed = sorted({f for s in sets for f in s})
    lab = read_features(wd.store, needed, table[schema.SAMPLE_ID].tolist())
    # The labeled rows once in the object store, shared (zero-copy) by every task; the pool,
    # many times larger, is read by each task from the store in batches, never here.
    data = ray.put({"feats": lab.feats, "masks": lab.masks, "y": table["y"].to_numpy(),
                    "folds": table["fold"].to_numpy(), "num_folds": cfg.train.folds,
                    "num_classes": len(cfg.labels), "store": str(wd.store),
                    "pool_ids": np.asarray(pool_ids, dtype=object),
                    "pairs": rc.fold_blind and rc.enabled})
    lab_ids = lab.ids
    del lab
    task = ray.remote(_task).options(num_cpus=rc.cpus_per_task)
    threads = max(1, int(rc.cpus_per_task))
    jobs = {(clf, "+".join(s)): task.remote(clf, rc.options.get(clf, {}), s, data, threads)
            for clf in rc.classifiers for s in sets}
    frames = []
    folds = table["fold"].to_numpy()
    results = collect(list(jobs.values()), "weak classifiers")
    pool_array = np.asarray(pool_ids)
    for (clf, group), (oof, pool_p, tops, pairs) in zip(jobs, results):
        no_tops = np.full((cfg.train.folds, len(lab_ids)), -1, dtype=np.int64)
        parts = [("oof", lab_ids, oof, no_tops, -1), ("pool", pool_array, pool_p, tops, -1)]
        for j in range(cfg.train.folds if pairs is not None else 0):
            out_j = folds != j
            parts.append(("pair", lab_ids[out_j], pairs[j][out_j], no_tops[:, out_j], j))
        for part, ids, p, t, train_fold in parts:
            df = pd.DataFrame(p, columns=schema.prob_columns(cfg.labels))
            df.insert(0, schema.SAMPLE_ID, ids)
            df.insert(1, "source", f"{clf}:{group}")
            df.insert(2, "group", group)
            df.insert(3, "part", part)
            df.insert(4, "train_fold", np.int8(train_fold))
            for k, top in enumerate(t):
                df[fold_top_column(k)] = top.astype(np.int8)
            frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    wd.refine.mkdir(parents=True, exist_ok=True)
    out.to_parquet(path, index=False)
    stamp.write(key)
    log.info("weak classifiers: %d sources over %d labeled and %d pool samples", len(jobs),
             len(lab_ids), len(pool_ids))
    return out
