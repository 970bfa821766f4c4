"""The fold loop without Ray: determinism, and that weights, class weights and label smoothing
reach the optimisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic_workdir import DIMS, synthetic_features

from ecmf import schema
from ecmf.config import TrainConfig
from ecmf.train.loop import arrays_from_batches, train_one_fold

FEATURES = list(DIMS)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def data(n=90, seed=0, weight=1.0) -> dict:
    y, feats, masks = synthetic_features(n, seed)
    d = {schema.SAMPLE_ID: np.array([f"s{i:03d}" for i in range(n)]), "y": y.astype(np.int64),
         "weight": np.full(n, weight, np.float32), "fold": np.arange(n) % 3}
    for f in FEATURES:
        d[schema.feature_column(f)] = feats[f]
        d[schema.mask_column(f)] = masks[f]
    return d


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 5, "folds": 3, "hidden": 16, "heads": 2, "batch_size": 16,
                          **kw})


def run(c: TrainConfig, d: dict | None = None, fold: int = 0) -> dict:
    return train_one_fold(c, d if d is not None else data(), FEATURES, DIMS, fold)


def same_state(a: dict, b: dict) -> bool:
    return all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])


def test_same_seed_same_fold_model_and_history():
    a, b = run(cfg()), run(cfg())
    assert a["history"] == b["history"] and same_state(a, b)
    c = run(cfg(seed=1))
    assert not same_state(a, c)
    # The epoch kept is the last of the best on the inner split; its validation WAF is reported.
    inner = [h["inner_waf"] for h in a["history"]]
    assert a["best_epoch"] == max(i for i, w in enumerate(inner) if w == max(inner))
    assert a["val_waf"] == a["history"][a["best_epoch"]]["val_waf"]


@pytest.mark.parametrize("select", ["inner", "last"])
def test_the_kept_epoch_never_looks_at_the_scored_fold(select):
    """Out-of-fold honesty: relabelling fold 0's validation rows changes its reported WAF, never
    which epoch is kept nor the model."""
    d = data()
    other = d.copy()
    val = d["fold"] == 0
    other["y"] = np.where(val, (d["y"] + 1) % 6, d["y"])
    c = cfg(epochs=8, select_epoch=select)
    a, b = run(c, d), run(c, other)
    assert a["best_epoch"] == b["best_epoch"] and same_state(a, b)
    assert a["val_waf"] != b["val_waf"]
    if select == "last":
        assert a["best_epoch"] == 7 and "inner_waf" not in a["history"][0]


def test_inner_split_is_stratified_labeled_only_and_the_same_for_a_seed():
    from ecmf.train.loop import inner_split

    d = data(n=120)
    d["fold"] = np.where(np.arange(120) < 20, -1, np.arange(120) % 3)  # 20 pseudo-label rows
    rows = d["fold"] != 0
    idx = inner_split(d, rows, 0.25, seed=0, fold=0)
    assert np.array_equal(idx, inner_split(d, rows, 0.25, seed=0, fold=0))
    assert not np.array_equal(idx, inner_split(d, rows, 0.25, seed=1, fold=0))
    assert rows[idx].all() and (d["fold"][idx] >= 0).all()  # pseudo-labels stay trained on
    labeled = rows & (d["fold"] >= 0)
    for c in np.unique(d["y"][labeled]):
        n = int((d["y"][labeled] == c).sum())
        assert int((d["y"][idx] == c).sum()) == max(1, round(0.25 * n))


def test_learns_above_chance():
    r = run(cfg(epochs=15))
    assert r["val_waf"] > 0.5  # six balanced classes: chance is about 0.17


def test_weights_scale_free_and_options_change_training():
    base = run(cfg())
    # Uniform weights of 2 give the same weighted mean, hence the same model, bit for bit.
    assert same_state(base, run(cfg(), data(weight=2.0)))
    assert not same_state(base, run(cfg(label_smoothing=0.2)))
    assert not same_state(base, run(cfg(class_weights="balanced"), imbalanced()))
    assert same_state(run(cfg(), imbalanced()), run(cfg(class_weights="none"), imbalanced()))
    d = data()
    d["weight"][d["y"] == 2] = 0.0  # a class that weighs nothing is never learnt
    r = train_one_fold(cfg(epochs=10), d, FEATURES, DIMS, 0)
    assert not same_state(base, r)
    from ecmf.models.fusion import MODELS
    from ecmf.train.loop import model_kwargs

    model = MODELS.get("ecmf")(**model_kwargs(cfg(), DIMS))
    model.load_state_dict(r["state"])
    model.eval()
    val = d["fold"] == 0
    with torch.no_grad():
        pred = model({f: torch.tensor(d[schema.feature_column(f)][val]) for f in FEATURES},
                     {f: torch.tensor(d[schema.mask_column(f)][val]) for f in FEATURES}).argmax(1)
    assert (pred == 2).sum() == 0


def imbalanced() -> dict:
    d = data()
    d["y"][d["y"] == 5] = 0  # class 0 twice as frequent, class 5 gone
    return d


def test_empty_shard_arrays_keep_feature_shapes():
    empty = arrays_from_batches([], FEATURES, DIMS)
    assert empty[schema.feature_column("voice")].shape == (0, DIMS["voice"])
    assert empty["y"].dtype == np.int64 and len(empty[schema.SAMPLE_ID]) == 0
    batches = [{k: v[:40] for k, v in data().items()}, {k: v[40:] for k, v in data().items()}]
    joined = arrays_from_batches(batches[::-1], FEATURES)
    assert joined[schema.SAMPLE_ID].tolist() == sorted(data()[schema.SAMPLE_ID].tolist())


def _with_pseudo(d: dict, train_fold: int, n: int = 30, seed: int = 5) -> dict:
    """`d` plus `n` pseudo-label rows (fold -1) of random labels for fold `train_fold`."""
    extra = data(n, seed=seed)
    extra[schema.SAMPLE_ID] = np.array([f"p{i:03d}" for i in range(n)])
    extra["y"] = np.random.default_rng(seed).integers(0, 6, n)
    extra["fold"] = np.full(n, -1)
    out = {k: np.concatenate([v, extra[k]]) for k, v in d.items()}
    out["train_fold"] = np.concatenate([np.full(len(d["y"]), -1), np.full(n, train_fold)])
    return out


def test_pseudo_labels_of_another_fold_change_nothing():
    base = run(cfg())
    assert same_state(base, run(cfg(), _with_pseudo(data(), train_fold=1)))  # fold 1's rows
    assert not same_state(base, run(cfg(), _with_pseudo(data(), train_fold=0)))  # fold 0's
    assert not same_state(base, run(cfg(), _with_pseudo(data(), train_fold=-1)))  # every fold's
    # Batches without train_fold (tables of older runs): every row serves every fold.
    joined = arrays_from_batches([data()], FEATURES)
    assert (joined["train_fold"] == -1).all()


def test_training_and_prediction_keys_are_checked():
    from ecmf.config import ConfigError, PredictConfig
    from ecmf.stages.common import load_config

    with pytest.raises(ConfigError, match="train.class_weights"):
        TrainConfig(class_weights="inverse")
    with pytest.raises(ConfigError, match="train.label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="train.max_failures"):
        TrainConfig(max_failures=-1)
    with pytest.raises(ConfigError, match="predict.batch_size"):
        PredictConfig(batch_size=0)
    cfg = load_config(None, ["predict.pool_size=3", "train.class_weights=balanced"])
    assert cfg.predict.pool_size == 3 and cfg.train.class_weights == "balanced"


def test_rows_of_another_fold_model_neither_train_nor_validate_this_one():
    """Fold-blind refined labels: a fold-0 clip's row for fold model 1 (fold 0, train_fold 1)
    must not enter fold 0's validation, whatever its label."""
    d = data()
    base = run(cfg())
    rows = np.flatnonzero(d["fold"] == 0)
    extra = {k: v[rows] for k, v in d.items()}
    extra["y"] = (extra["y"] + 1) % 6  # wrong labels: they would lower fold 0's validation WAF
    both = {k: np.concatenate([v, extra[k]]) for k, v in d.items()}
    both["train_fold"] = np.r_[np.full(len(d["y"]), -1), np.full(len(rows), 1)]
    other = run(cfg(), both)
    assert same_state(base, other) and other["history"] == base["history"]


def test_cosine_schedule_decays_the_rate_to_zero_over_the_fold_and_changes_training():
    from ecmf.train.loop import lr_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert lr_schedule(opt, "constant", 10) is None
    sched = lr_schedule(opt, "cosine", 10)
    rates = []
    for _ in range(10):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(0.1) and rates[5] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert not same_state(run(cfg()), run(cfg(lr_schedule="cosine")))


def test_weight_average_is_a_plain_mean_then_an_exponential_one():
    from ecmf.train.loop import _average_into, average_decay

    model, average = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    seen = []
    for step, value in enumerate([3.0, 5.0, 10.0, 2.0, 6.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        _average_into(average, model, average_decay(step, horizon_steps=3))
        seen.append(round(average.weight.item(), 6))
    # The mean of the first 1, 2, 3 steps; then each step weighs 1/3.
    assert seen == [3.0, 4.0, 6.0, round(6.0 * 2 / 3 + 2.0 / 3, 6), round(
        (6.0 * 2 / 3 + 2.0 / 3) * 2 / 3 + 2.0, 6)]
    assert average_decay(0, 0.5) == 0.0 and average_decay(10, 0.5) == 0.0  # horizon < 1 step


def test_the_averaged_weights_are_what_is_scored_and_kept():
    from ecmf.models.fusion import MODELS
    from ecmf.train.loop import evaluate_confusion, model_kwargs
    from ecmf.train.metrics import weighted_f1_from_confusion

    d = data()
    averaged, raw = run(cfg(average_epochs=1.0), d), run(cfg(average_epochs=0.0), d)
    assert not same_state(averaged, raw) and same_state(averaged, run(cfg(average_epochs=1.0), d))
    for r in (averaged, raw):
        model = MODELS.get("ecmf")(**model_kwargs(cfg(), DIMS))
        model.load_state_dict(r["state"])
        cm = evaluate_confusion(model, d, FEATURES, np.flatnonzero(d["fold"] == 0), "cpu")
        assert weighted_f1_from_confusion(cm) == r["val_waf"]
