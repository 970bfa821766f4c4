"""Multi-source label refinement: a weighted soft vote of the original label, weak classifiers,
the fusion model's out-of-fold predictions and LLM votes gives each labeled sample a refined label.

`combine` is the pure rule (NumPy arrays in, arrays out); `refine_labels` is the stage that gathers
the sources and writes `<workdir>/refine/labels.parquet` with the original label kept beside.

Fold-blind refinement (`refine.fold_blind`, the default, when `refine.enabled` makes the
rounds train on refined labels) also writes `fold_labels.parquet`, what training uses: for fold
model j, each labeled clip outside fold j relabeled by sources fit without fold j and the clip's
own fold (weak classifiers and a fusion run over pairs of folds), so that no model learns,
through a refined label, the labels it is validated on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ecmf import schema
from ecmf.config import Config
from ecmf.data.manifest import load_manifest, with_labels
from ecmf.errors import MissingInput
from ecmf.features.store import usage_counts
from ecmf.keys import Stamp, file_sha256, frame_sha256
from ecmf.semi.weak import fold_pairs, weak_inputs, weak_key, weak_probabilities
from ecmf.train.fit import fit, resolve_features, run_changes, run_record, stage_table
from ecmf.train.metrics import classification_report
from ecmf.workdir import Workdir, save_config, write_json

log = logging.getLogger(__name__)
ORIGINAL = "original"
FUSION = "fusion"
LLM = "llm"
KEY_FILE = "refine_key.json"
LABEL_COLUMNS = [schema.SAMPLE_ID, "original", "refined", schema.CONFIDENCE, "agreed", "changed",
                 "weight"]
FOLD_LABEL_COLUMNS = [schema.SAMPLE_ID, "train_fold", *LABEL_COLUMNS[1:]]
PAIRS_RUN = "pairs"  # <workdir>/refine/pairs: the fusion model fit over pairs of folds


@dataclass
class Refinement:
    """What `combine` decides per sample."""

    label: np.ndarray  # [N] int: the refined label (the original where nothing changed)
    confidence: np.ndarray  # [N] float: the vote's share for `label`, in [0, 1]
    agreed: list[list[str]]  # per sample, the sources whose top class is `label`
    changed: np.ndarray  # [N] bool: label != original


def combine(sources: dict[str, np.ndarray], weights: dict[str, float], original: np.ndarray,
            threshold: float, min_agree: int, original_weight: float = 1.0,
            groups: dict[str, str] | None = None) -> Refinement:
    """Weighted soft vote over `sources` (name -> probabilities [N, C]) and the original label.

    The original label counts as a one-hot source of weight `original_weight`; source `s` adds
    `weights[s] * probs_s`. A row of NaN means the source has nothing to say about that sample
    (a missing modality, a failed LLM vote): it is left out of that sample's vote and of its
    normaliser. The vote's confidence in a class is its share of the weight that voted.

    A label changes only when the vote's top class (a) differs from the original, (b) has a
    confidence >= `threshold`, (c) is the top class of sources from at least `min_agree`
    independent groups (`groups` maps a source to its group, e.g. its feature set, so three
    classifiers on one feature count once; default: every source its own group), and (d) is
    the vote's unique maximum. Otherwise (ties, all sources disagreeing, weak votes) the
    original label stays, with its own share of the vote as confidence.
    """
    original = np.asarray(original)
    n = original.shape[0]
    if original.ndim != 1 or (n and not np.issubdtype(original.dtype, np.integer)):
        raise ValueError(f"combine: original must be a 1-D integer array, got {original.dtype} "
                         f"{original.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"combine: threshold {threshold} is outside [0, 1]")
    if min_agree < 1:
        raise ValueError(f"combine: min_agree {min_agree} must be >= 1")
    if original_weight < 0:
        raise ValueError(f"combine: original_weight {original_weight} must be >= 0")
    missing = [s for s in sources if s not in weights]
    if missing:
        raise ValueError(f"combine: no weight for source(s) {missing}; weights: {sorted(weights)}")
    c = None
    for name, p in sources.items():
        p = np.asarray(p)
        if p.ndim != 2 or p.shape[0] != n or (c is not None and p.shape[1] != c):
            raise ValueError(f"combine: source {name!r} has shape {p.shape}, expected "
                             f"[{n}, {c if c is not None else 'C'}]")
        c = p.shape[1]
        if weights[name] < 0:
            raise ValueError(f"combine: weight of {name!r} is {weights[name]}, must be >= 0")
    if c is None:
        c = int(original.max()) + 1 if n else 1
    if n and (original.min() < 0 or original.max() >= c):
        raise ValueError(f"combine: original labels must lie in [0, {c})")
    groups = groups or {}

    score = np.zeros((n, c))
    total = np.zeros(n)
    score[np.arange(n), original] += original_weight
    total += original_weight
    names = list(sources)
    tops = np.full((len(names), n), -1, dtype=np.int64)  # -1: the source did not vote
    for j, name in enumerate(names):
        p = np.asarray(sources[name], dtype=np.float64)
        present = np.isfinite(p).all(axis=1)
        w = weights[name]
        score[present] += w * p[present]
        total[present] += w
        top = p[present].argmax(axis=1)
        # A source that cannot choose (its own tie at the top) agrees with nobody.
        unique = (p[present] == p[present].max(axis=1, keepdims=True)).sum(axis=1) == 1
        tops[j, np.flatnonzero(present)[unique]] = top[unique]

    share = np.divide(score, total[:, None], out=np.zeros_like(score), where=total[:, None] > 0)
    best = share.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    top_val = share.max(axis=1) if n else np.zeros(0)
    unique_top = (np.isclose(share, top_val[:, None], rtol=0, atol=1e-12).sum(axis=1) == 1)

    agreed_groups = np.zeros(n, dtype=np.int64)
    for i in np.flatnonzero(best != original):
        agreed_groups[i] = len({groups.get(names[j], names[j])
                                for j in np.flatnonzero(tops[:, i] == best[i])})
    change = ((best != original) & unique_top & (top_val >= threshold)
              & (agreed_groups >= min_agree) & (total > 0))
    label = np.where(change, best, original)
    confidence = share[np.arange(n), label] if n else np.zeros(0)
    agreed = [[ORIGINAL] * bool(original[i] == label[i] and original_weight > 0)
              + [names[j] for j in np.flatnonzero(tops[:, i] == label[i])] for i in range(n)]
    return Refinement(label=label.astype(np.int64), confidence=confidence, agreed=agreed,
                      changed=change)


def sample_weights(confidence: np.ndarray, changed: np.ndarray, min_weight: float,
                   by_confidence: bool) -> np.ndarray:
    """Training weight per labeled sample: 1 for a kept label; for a changed one, with
    `by_confidence`, its vote confidence (floored at `min_weight`), rescaled so that the most
    confident change gets 1 (vote shares rarely reach 1 when sources split their mass).

    Kept labels are not down-weighted: a low share there marks hard clean samples as often as
    noisy ones, and dropping their weight cost accuracy in development runs.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    changed = np.asarray(changed, dtype=bool)
    w = np.ones(confidence.shape[0])
    if by_confidence and changed.any():
        c = confidence[changed]
        w[changed] = np.clip(c / max(c.max(), 1e-12), min_weight, 1.0)
    return w


# ----------------------------------------------------------------------------------- the stage


def _frame_probs(df: pd.DataFrame, ids: np.ndarray, columns: list[str]) -> np.ndarray:
    """Rows of `df` (indexed by sample_id) for `ids`, NaN where a sample is absent."""
    got = df.reindex(ids)[columns].to_numpy(dtype=np.float64)
    return got


def gather_sources(cfg: Config, ids: np.ndarray, train_fold: int = -1,
                   weak: pd.DataFrame | None = None,
                   fusion: pd.DataFrame | None = None) -> tuple[dict, dict, dict]:
    """Probabilities [N, C] per source for the labeled `ids`, their weights and groups.

    `train_fold` -1: out-of-fold sources (each fit without the sample's fold). k >= 0: fold
    model k's fold-blind sources (fit without fold k and the sample's fold). `weak`, `fusion`:
    the weak classifiers' table and the fusion source's out-of-fold frame when the caller has
    them (a frame with a `train_fold` column: its rows for `train_fold`)."""

    cfg = with_labels(cfg)
    rc = cfg.refine
    wd = Workdir.of(cfg)
    sources: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    groups: dict[str, str] = {}
    probs = schema.prob_columns(cfg.labels)
    if rc.weights.get("weak", 0.0) > 0 and rc.classifiers:
        weak = weak_probabilities(cfg) if weak is None else weak
        if train_fold < 0:
            oof = weak[weak["part"] == "oof"]
        else:
            oof = weak[(weak["part"] == "pair") & (weak["train_fold"] == train_fold)]
        names = sorted(weak["source"].unique())
        for name in names:
            one = oof[oof["source"] == name].set_index(schema.SAMPLE_ID)
            sources[name] = _frame_probs(one, ids, probs)
            weights[name] = rc.weights["weak"] / len(names)  # the weak sources share one weight
            groups[name] = weak.loc[weak["source"] == name, "group"].iloc[0]
    if rc.weights.get(FUSION, 0.0) > 0:
        if fusion is None:
            path = wd.train / "oof.parquet"
            if not path.is_file():
                raise MissingInput(f"{path}: the fusion source needs a trained run; run "
                                   "`ecmf train` first (or set refine.weights.fusion=0)")
            fusion = pd.read_parquet(path)
        if "train_fold" in fusion:
            fusion = fusion[fusion["train_fold"] == train_fold]
        sources[FUSION] = _frame_probs(fusion.set_index(schema.SAMPLE_ID), ids, probs)
        weights[FUSION] = rc.weights[FUSION]
    votes_path = wd.enrich / "votes.parquet"
    if rc.use_llm_votes and rc.weights.get(LLM, 0.0) > 0 and votes_path.is_file():
        votes = pd.read_parquet(votes_path).set_index(schema.SAMPLE_ID)
        sources[LLM] = _frame_probs(votes, ids, [f"vote_{x}" for x in cfg.labels])
        weights[LLM] = rc.weights[LLM]
    return sources, weights, groups


def pair_table(table: pd.DataFrame, folds: int) -> pd.DataFrame:
    """The training table of the fusion source of fold-blind refinement: one model per pair of
    folds (`fold_pairs`), trained on the other folds and validated on the pair's two.

    `table`: the labeled rows of `training_table` (original labels). A clip of fold m gets a row
    per pair p: a validation row (fold p, train_fold p) when m is in p, else a training row of
    model p alone (fold -1, train_fold p); `train_one_fold` does the rest."""

    lab = table[table["fold"] >= 0]
    parts = []
    for p, (a, b) in enumerate(fold_pairs(folds)):
        held = lab["fold"].isin([a, b]).to_numpy()
        parts.append(pd.DataFrame({
            schema.SAMPLE_ID: lab[schema.SAMPLE_ID].to_numpy(), "y": lab["y"].to_numpy(),
            "weight": lab["weight"].to_numpy(), "fold": np.where(held, p, -1),
            "train_fold": p}))
    return (pd.concat(parts, ignore_index=True)
            .sort_values([schema.SAMPLE_ID, "train_fold"], kind="stable").reset_index(drop=True))


def _pairs_setup(cfg: Config):
    """The pair run's config (train.folds = the number of pairs), features, dims and table."""
    from dataclasses import replace

    cfg = with_labels(cfg)
    folds = cfg.train.folds
    table = pair_table(stage_table(cfg), folds)
    pcfg = replace(cfg, train=replace(cfg.train, folds=len(fold_pairs(folds))))
    features, dims = resolve_features(cfg)
    return pcfg, features, dims, table


def pair_run_record(cfg: Config) -> dict:
    """What the fusion pair run depends on (`ecmf.train.fit.run_record` of it)."""

    pcfg, features, dims, table = _pairs_setup(cfg)
    return run_record(pcfg, features, dims, table)


def fusion_pair_probs(cfg: Config, fold_of: dict[str, int]) -> pd.DataFrame:
    """Fold-blind fusion probabilities: sample_id, train_fold j, prob_* for every labeled clip
    outside fold j, from the fusion model fit without fold j and the clip's fold (`fold_of`:
    `training_fold_of`).

    Trains `<workdir>/refine/pairs` (one fold model per pair of folds) unless a
    finished run there has the same settings, features and table."""

    pcfg, features, dims, table = _pairs_setup(cfg)
    out = Workdir.of(cfg).refine / PAIRS_RUN
    record = run_record(pcfg, features, dims, table)
    done = ((out / "metrics.json").is_file() and (out / "oof.parquet").is_file()
            and run_changes(out, record) == [])
    if done:
        log.info("refine: reusing the fusion pair run %s", out)
    else:
        log.info("refine: fitting the fusion model over %d pairs of folds into %s",
                 pcfg.train.folds, out)
        fit(pcfg, table, out)
    oof = pd.read_parquet(out / "oof.parquet")  # a row per (clip, pair that holds it out)
    pairs = np.array(fold_pairs(cfg.train.folds))
    # The clip's own fold m is one of its validation pair's two; fold j is the other.
    m = oof[schema.SAMPLE_ID].map(fold_of).to_numpy()
    a, b = pairs[oof["fold"].to_numpy(), 0], pairs[oof["fold"].to_numpy(), 1]
    frame = oof[[schema.SAMPLE_ID, *schema.prob_columns(cfg.labels)]].copy()
    frame.insert(1, "train_fold", np.where(m == a, b, a))
    return frame


def training_fold_of(cfg: Config) -> dict[str, int]:
    """sample_id -> the fold of each labeled clip (the split every training run shares)."""

    t = stage_table(cfg)
    return dict(zip(t[schema.SAMPLE_ID].astype(str), t["fold"].astype(int)))


def refine_key(cfg: Config) -> dict:
    """What the refined labels depend on: the refine settings (not resources), the labeled
    set, and every source they were voted from: the weak classifiers' inputs (`weak_key`),
    the fusion run's out-of-fold predictions, the fusion pair run's settings and table
    (fold-blind) and the LLM votes (their files' digests)."""
    from dataclasses import asdict

    rc = cfg.refine
    wd = Workdir.of(cfg)
    manifest = load_manifest(cfg)
    lab = manifest[manifest[schema.SPLIT] == "train"].sort_values(schema.SAMPLE_ID)
    key: dict = {"refine": {k: v for k, v in asdict(rc).items() if k != "cpus_per_task"},
                 "labels_sha256": frame_sha256(lab[[schema.SAMPLE_ID, schema.LABEL]])}
    if rc.weights.get("weak", 0.0) > 0 and rc.classifiers:
        key["weak"] = weak_key(cfg, *weak_inputs(cfg))
    if rc.weights.get(FUSION, 0.0) > 0:
        key[FUSION] = file_sha256(wd.train / "oof.parquet")
        if rc.fold_blind and rc.enabled:
            key["fusion_pairs"] = pair_run_record(cfg)
    if rc.use_llm_votes and rc.weights.get(LLM, 0.0) > 0:
        key[LLM] = file_sha256(wd.enrich / "votes.parquet")
    return key


def _vote(cfg: Config, ids: np.ndarray, original: np.ndarray, sources: dict, weights: dict,
          groups: dict) -> pd.DataFrame:
    """`combine` and `sample_weights` over one set of sources, as rows of LABEL_COLUMNS."""
    rc = cfg.refine
    ref = combine(sources, weights, original, rc.threshold, rc.min_agree,
                  rc.weights.get(ORIGINAL, 1.0), groups)
    weight = sample_weights(ref.confidence, ref.changed, rc.min_weight, rc.weight_by_confidence)
    labels = np.array(cfg.labels)
    return pd.DataFrame({
        schema.SAMPLE_ID: ids, "original": labels[original], "refined": labels[ref.label],
        schema.CONFIDENCE: ref.confidence, "agreed": [",".join(a) for a in ref.agreed],
        "changed": ref.changed, "weight": weight})


def fold_blind_labels(cfg: Config, ids: np.ndarray, original: np.ndarray,
                      weak: pd.DataFrame | None) -> pd.DataFrame:
    """FOLD_LABEL_COLUMNS: for each fold model j, the clips outside fold j voted by fold-blind
    sources (weak "pair" rows, `fusion_pair_probs`, the LLM votes, which saw no label)."""
    rc = cfg.refine
    fold_of = training_fold_of(cfg)
    fusion = fusion_pair_probs(cfg, fold_of) if rc.weights.get(FUSION, 0.0) > 0 else None
    fold = pd.Series(fold_of).reindex(ids).to_numpy()
    parts = []
    for j in range(cfg.train.folds):
        out_j = fold != j
        sources, weights, groups = gather_sources(cfg, ids[out_j], j, weak, fusion)
        part = _vote(cfg, ids[out_j], original[out_j], sources, weights, groups)
        part.insert(1, "train_fold", j)
        parts.append(part)
    return (pd.concat(parts, ignore_index=True)
            .sort_values([schema.SAMPLE_ID, "train_fold"], kind="stable").reset_index(drop=True))


def refine_labels(cfg: Config, key: dict | None = None) -> dict:
    """`ecmf refine`: refined labels of the labeled set into `<workdir>/refine/`:
    `labels.parquet` (one per clip, from the out-of-fold sources) and, fold-blind,
    `fold_labels.parquet` (one per clip and fold model that trains on it).

    `key`: `refine_key(cfg)` when the caller has it already (it reads the manifest and the
    store's ids)."""

    cfg = with_labels(cfg)
    rc = cfg.refine
    wd = Workdir.of(cfg)
    out = wd.refine
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    manifest = load_manifest(cfg)
    lab = manifest[manifest[schema.SPLIT] == "train"].sort_values(schema.SAMPLE_ID)
    ids = lab[schema.SAMPLE_ID].to_numpy().astype(str)
    original = schema.label_indices(lab[schema.LABEL].to_numpy(), "the manifest", cfg.labels)
    # Fitted whenever classifiers are named: they vote here (refine.weights.weak) and on the
    # pool in `ecmf pseudo-label` (pseudo.min_agree), which reads what this stage writes.
    weak = weak_probabilities(cfg) if rc.classifiers else None
    # The fold-blind labels cost a fusion run per pair of folds: made only for rounds that use
    # them. The key holds refine.enabled, so turning it on later asks for this stage again.
    blind = rc.fold_blind and rc.enabled
    sources, weights, groups = gather_sources(cfg, ids, -1, weak)
    table = _vote(cfg, ids, original, sources, weights, groups)
    table.to_parquet(out / "labels.parquet", index=False)

    per_source = {}
    for name, p in sources.items():
        present = np.isfinite(p).all(axis=1)
        if present.any():
            per_source[name] = {
                "weight": round(weights[name], 4), "coverage": round(float(present.mean()), 4),
                "agreement_with_original": classification_report(
                    original[present], p[present].argmax(axis=1))["accuracy"]}
    transitions = (table[table["changed"]].groupby(["original", "refined"]).size()
                   .sort_values(ascending=False))
    used = usage_counts(wd.store, ids)
    metrics = {
        "n_labeled": int(len(table)),
        # Voted on by the sources that need no features (the original label, LLM votes).
        "n_labeled_without_features": used["without_features"],
        "changed": int(table["changed"].sum()),
        "changed_fraction": round(float(table["changed"].mean()) if len(table) else 0.0, 4),
        "threshold": rc.threshold, "min_agree": rc.min_agree, "sources": per_source,
        "transitions": {f"{a}->{b}": int(v) for (a, b), v in transitions.items()},
        "refined_classes": table["refined"].value_counts().to_dict(),
        "mean_weight": round(float(table["weight"].mean()) if len(table) else 0.0, 4),
        "fold_blind": blind,
    }
    fold_path = out / "fold_labels.parquet"
    if blind:
        folded = fold_blind_labels(cfg, ids, original, weak)
        folded.to_parquet(fold_path, index=False)
        mine = table.set_index(schema.SAMPLE_ID)["refined"].reindex(folded[schema.SAMPLE_ID])
        metrics["fold_labels"] = {
            "rows": int(len(folded)), "changed": int(folded["changed"].sum()),
            "changed_fraction": round(float(folded["changed"].mean()) if len(folded) else 0, 4),
            # How often a fold model's label is the one the out-of-fold sources gave.
            "same_as_labels": round(float((mine.to_numpy() == folded["refined"].to_numpy())
                                          .mean()) if len(folded) else 0.0, 4)}
    elif fold_path.is_file():
        fold_path.unlink()  # from a fold-blind refinement before: not what training uses now
    write_json(out / "metrics.json", metrics)
    Stamp(out / KEY_FILE).write(key or refine_key(cfg))  # last: it marks the labels finished
    log.info("refine: %d of %d labels changed by %d sources%s", metrics["changed"], len(table),
             len(sources), f"; fold-blind: {metrics['fold_labels']['changed']} of "
             f"{metrics['fold_labels']['rows']} fold labels" if blind else "")
    return metrics


def refined_labels(cfg: Config) -> pd.DataFrame | None:
    """The refined labels the training table should use, or None when refinement is off:
    `fold_labels.parquet` (a `train_fold` column) when fold-blind, else `labels.parquet`.

    One way only: `ecmf refine` writes them, the rounds read them. Missing labels, or labels
    made from other settings or sources than this config's (`refine_key`: a retrained fusion
    model, a re-extracted store, new LLM votes, another refine setting) fail naming what
    changed and the command that makes them again.
    """
    if not cfg.refine.enabled:
        return None
    wd = Workdir.of(cfg)
    path = wd.refine / ("fold_labels.parquet" if cfg.refine.fold_blind else "labels.parquet")
    changes = Stamp(wd.refine / KEY_FILE).changes(refine_key(cfg)) if path.is_file() else None
    if changes is None:
        raise MissingInput(f"refine.enabled is true but {path} is not there (or unfinished): "
                           f"run `ecmf refine` with this config first")
    if changes:
        raise MissingInput(f"{path} is stale: {'; '.join(changes)} since `ecmf refine` wrote it; "
                           f"run `ecmf refine` again with this config")
    return pd.read_parquet(path)
