"""Search spaces: parsing (errors name the key), seeded draws, validation through load_config."""

from __future__ import annotations

import math

import pytest

from ecmf.config import ConfigError, TrainConfig
from ecmf.stages.common import load_config
from ecmf.tune.space import (
    Param,
    check_points,
    feature_sets,
    max_epochs,
    parse_space,
    sample_points,
    to_tune,
    tune_point,
)

SPACE = {
    "hidden": {"choice": [32, 64]},
    "layers": {"randint": [1, 3]},
    "dropout": {"uniform": [0.0, 0.5]},
    "lr": {"loguniform": ["1e-4", "1e-2"]},  # how YAML reads 1e-4 without a dot
    "heads": {"grid": [2, 4]},
    "features": {"choice": [["text"], "text,audio", []]},
    "epochs": 12,
}


def test_every_form_parses_to_typed_values():
    params = parse_space(SPACE)
    assert params["hidden"] == Param("hidden", "choice", (32, 64))
    assert params["lr"] == Param("lr", "loguniform", (1e-4, 1e-2))
    assert params["layers"].values == (1, 3) and params["heads"].kind == "grid"
    assert params["features"].values == (["text"], ["text", "audio"], [])
    assert params["epochs"] == Param("epochs", "fixed", (12,))
    assert feature_sets(params, TrainConfig()) == [["text"], ["text", "audio"], []]
    assert max_epochs(params, TrainConfig()) == 12
    assert max_epochs(parse_space({"epochs": {"randint": [5, 9]}}), TrainConfig()) == 9


@pytest.mark.parametrize("space, words", [
    ({"folds": {"choice": [3, 5]}}, ["tune.space.folds", "tunable"]),
    ({"lr": {"normal": [0, 1]}}, ["tune.space.lr", "loguniform"]),
    ({"lr": {"uniform": [0.1, 0.2], "choice": [1]}}, ["tune.space.lr"]),
    ({"hidden": [32, 64]}, ["tune.space.hidden", "choice"]),
    ({"hidden": {"uniform": [32, 64]}}, ["tune.space.hidden", "randint"]),
    ({"dropout": {"randint": [0, 1]}}, ["tune.space.dropout", "float"]),
    ({"lr": {"uniform": [0.1]}}, ["tune.space.lr", "two bounds"]),
    ({"lr": {"uniform": [0.2, 0.1]}}, ["tune.space.lr", "lo < hi"]),
    ({"lr": {"loguniform": [0.0, 0.1]}}, ["tune.space.lr", "0 < lo"]),
    ({"lr": {"choice": ["fast"]}}, ["tune.space.lr", "a number"]),
    ({"layers": {"choice": [1.5]}}, ["tune.space.layers", "integer"]),
    ({"features": {"choice": [[1, 2]]}}, ["tune.space.features", "feature names"]),
    ({"epochs": {"choice": []}}, ["tune.space.epochs", "non-empty"]),
])
def test_errors_name_the_key(space, words):
    with pytest.raises(ConfigError) as e:
        parse_space(space)
    for w in words:
        assert w in str(e.value)


def test_draws_are_reproducible_cover_the_grid_and_stay_in_bounds():
    params = parse_space(SPACE)
    points = sample_points(params, 20, seed=3)
    assert len(points) == 40  # 20 draws x 2 grid values
    assert points == sample_points(params, 20, seed=3)
    assert points != sample_points(params, 20, seed=4)
    assert [p["heads"] for p in points[:4]] == [2, 4, 2, 4]
    assert {p["layers"] for p in points} == {1, 2, 3}  # randint includes both ends
    assert all(1e-4 <= p["lr"] <= 1e-2 and 0.0 <= p["dropout"] <= 0.5 for p in points)
    assert all(isinstance(p["hidden"], int) and isinstance(p["lr"], float) for p in points)
    # Log-uniform: about as many draws below the geometric middle as above it.
    assert 10 <= sum(p["lr"] < 1e-3 for p in points) <= 30
    points[0]["features"].append("x")  # points own their lists
    assert all("x" not in p["features"] for p in points[1:])


def test_points_that_make_bad_train_configs_fail_naming_the_point():
    points = sample_points(parse_space({"hidden": {"choice": [30]}}), 1, 0)
    with pytest.raises(ConfigError, match=r"tune\.space: point 0 .*train\.hidden"):
        check_points(points, TrainConfig(heads=4))


@pytest.mark.parametrize("item, key", [
    ("tune.space.hidden.choice=[30]", "train.hidden"),  # 30 is no multiple of 4 heads
    ("tune.space.bogus.choice=[1]", "tune.space.bogus"),
    ("tune.scheduler=hyperband", "tune.scheduler"),
    ("tune.cv_folds=1", "tune.cv_folds"),
    ("tune.runner=threads", "tune.runner"),
    ("tune.reduction_factor=1", "tune.reduction_factor"),
])
def test_load_config_validates_the_tune_section(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [item])


def test_tune_section_round_trips_and_sets_parse(tmp_path):
    cfg = load_config(None, ["tune.space.lr.loguniform=[1e-4,1e-2]", "tune.num_samples=3"])
    assert parse_space(cfg.tune.space)["lr"].values == (1e-4, 1e-2)
    from ecmf.workdir import save_config

    assert load_config(save_config(cfg, tmp_path)) == cfg


def test_tune_domains_and_points_as_tune_holds_them():
    from ray import tune

    params = parse_space(SPACE)
    domains = to_tune(params)
    assert domains["heads"] == {"grid_search": [2, 4]} and domains["epochs"] == 12
    assert isinstance(domains["layers"], tune.search.sample.Integer)
    assert domains["layers"].upper == 4  # Tune's randint excludes its upper bound
    assert math.isclose(domains["lr"].lower, 1e-4)
    assert domains["features"].categories == ["text", "text,audio", ""]
    assert isinstance(to_tune(params, with_grid=False)["heads"], tune.search.sample.Categorical)
    assert tune_point({"features": ["text", "audio"], "lr": 0.1}) == {"features": "text,audio",
                                                                       "lr": 0.1}
