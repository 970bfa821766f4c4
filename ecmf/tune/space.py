"""Search spaces (pure): the YAML `tune.space` parsed into typed parameters, drawn into points.

Points are drawn here with NumPy from `tune.seed` rather than by Tune, so that a search is the
same list of configurations on every run (and two schedulers can be compared on the same list).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecmf.config import ConfigError, TrainConfig, TuneConfig, from_dict

KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
# Train keys a search may vary; the rest (folds, workers, storage...) describe the run.
TUNABLE = ("model", "features", "hidden", "heads", "layers", "dropout", "modality_dropout", "lr",
           "weight_decay", "label_smoothing", "epochs", "batch_size")
_FORMS = ("{choice: [a, b]}, {grid: [a, b]}, {uniform: [lo, hi]}, {loguniform: [lo, hi]}, "
          "{randint: [lo, hi]} or a fixed value")


@dataclass(frozen=True)
class Param:
    """One searched key: `kind` is one of KINDS or "fixed"; `values` the list or the bounds."""

    key: str
    kind: str
    values: tuple


def _key_type(key: str) -> Any:
    return typing.get_type_hints(TrainConfig)[key]


def _fail(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"config tune.space.{key}: expected {expected}, got {value!r}")


def _number(key: str, tp: Any, v: Any) -> int | float:
    """A value of an int or float key; YAML reads `1e-4` (no dot) as a string, so accept that."""
    if isinstance(v, str) and tp is float:
        try:
            v = float(v)
        except ValueError:
            raise _fail(key, "a number", v) from None
    if tp is int:
        if not isinstance(v, int) or isinstance(v, bool):
            raise _fail(key, "an integer (an int key)", v)
        return v
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _fail(key, "a number", v)
    return float(v)


def _value(key: str, v: Any) -> Any:
    """One possible value of `key`, in the type TrainConfig holds."""
    tp = _key_type(key)
    if key == "features":
        if isinstance(v, str):  # "text,audio", as `--set train.features=` takes it
            v = [f for f in v.split(",") if f]
        if not isinstance(v, (list, tuple)) or not all(isinstance(f, str) for f in v):
            raise _fail(key, "a list of feature names ([] for every feature)", v)
        return list(v)
    if tp is str:
        if not isinstance(v, str):
            raise _fail(key, "a string", v)
        return v
    return _number(key, tp, v)


def parse_param(key: str, spec: Any) -> Param:
    """One entry of `tune.space`; errors name `tune.space.<key>` and the accepted forms."""
    if key not in TUNABLE:
        raise ConfigError(f"config tune.space.{key}: not a train key a search can vary; "
                          f"tunable: {list(TUNABLE)}")
    if not isinstance(spec, dict):
        if isinstance(spec, (list, tuple)) and key != "features":
            raise _fail(key, f"one of {_FORMS} (a bare list is ambiguous: write {{choice: [...]}})",
                        spec)
        return Param(key, "fixed", (_value(key, spec),))
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise _fail(key, f"one of {_FORMS}", spec)
    kind, args = next(iter(spec.items()))
    if not isinstance(args, (list, tuple)) or not args:
        raise _fail(key, f"a non-empty list after {kind}", args)
    if kind in ("choice", "grid"):
        return Param(key, kind, tuple(_value(key, v) for v in args))
    tp = _key_type(key)
    if kind == "randint" and tp is not int:
        raise _fail(key, "uniform or loguniform (randint draws integers; this key is a float)",
                    spec)
    if kind in ("uniform", "loguniform") and tp is not float:
        raise _fail(key, "choice, grid or randint (this key is not a float)", spec)
    if len(args) != 2:
        raise _fail(key, f"two bounds [lo, hi] after {kind}", args)
    lo, hi = (_number(key, tp, v) for v in args)
    if not lo < hi and not (kind == "randint" and lo == hi):
        raise _fail(key, f"lo < hi after {kind}", args)
    if kind == "loguniform" and lo <= 0:
        raise _fail(key, "0 < lo < hi after loguniform", args)
    return Param(key, kind, (lo, hi))


def parse_space(space: dict[str, Any]) -> dict[str, Param]:
    """All of `tune.space` as Params, in the file's order."""
    return {str(k): parse_param(str(k), v) for k, v in space.items()}


def _draw(p: Param, rng: np.random.Generator) -> Any:
    if p.kind == "fixed":
        return p.values[0]
    if p.kind == "choice":
        return p.values[int(rng.integers(len(p.values)))]
    lo, hi = p.values
    if p.kind == "randint":
        return int(rng.integers(lo, hi + 1))
    if p.kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def sample_points(params: dict[str, Param], num_samples: int, seed: int) -> list[dict]:
    """`num_samples` draws of the random keys, each run at every point of the grid keys."""
    rng = np.random.default_rng(seed)
    grid = [p for p in params.values() if p.kind == "grid"]
    combos = list(itertools.product(*(p.values for p in grid))) or [()]
    points = []
    for _ in range(num_samples):
        for combo in combos:
            fixed = {p.key: v for p, v in zip(grid, combo)}
            point = {k: fixed[k] if k in fixed else _draw(p, rng) for k, p in params.items()}
            points.append(copy.deepcopy(point))  # no list shared between points
    return points


def trial_config(base: TrainConfig, point: dict) -> TrainConfig:
    """The train config of one point: `base` with the point's keys replaced (and validated)."""
    return from_dict(TrainConfig, {**dataclasses.asdict(base), **point}, "train")


def check_points(points: list[dict], base: TrainConfig) -> None:
    """Fail, naming the point, when one makes an invalid train config (e.g. hidden % heads)."""
    for i, point in enumerate(points):
        try:
            trial_config(base, point)
        except ConfigError as e:
            raise ConfigError(f"config tune.space: point {i} {point} is not a valid train "
                              f"config: {e}") from None


def search_points(tune: TuneConfig, base: TrainConfig) -> list[dict]:
    """The checked list of points a random search runs."""
    points = sample_points(parse_space(tune.space), tune.num_samples, tune.seed)
    check_points(points, base)
    return points


def max_epochs(params: dict[str, Param], base: TrainConfig) -> int:
    """The most epochs a trial of the space can run (ASHA's max_t)."""
    p = params.get("epochs")
    if p is None:
        return base.epochs
    return int(max(p.values))


def feature_sets(params: dict[str, Param], base: TrainConfig) -> list[list[str]]:
    """Every feature list a trial may take ([] meaning every feature in the store)."""
    p = params.get("features")
    return [list(v) for v in p.values] if p is not None else [list(base.features)]


def tune_point(point: dict) -> dict:
    """A point as Tune holds it: a feature list as "a,b" ("" for all), which TrainConfig reads
    back; Tune would take a list in a point for a nested search space."""
    return {k: ",".join(v) if isinstance(v, list) else v for k, v in point.items()}


def to_tune(params: dict[str, Param], with_grid: bool = True) -> dict[str, Any]:
    """Ray Tune domains of the space (randint's upper bound made exclusive, as Tune takes it).

    `with_grid=False` turns grid keys into choices, for searches given explicit points.
    """
    from ray import tune

    out: dict[str, Any] = {}
    for k, p in params.items():
        values = [tune_point({k: v})[k] for v in p.values]
        if p.kind == "fixed":
            out[k] = values[0]
        elif p.kind == "choice" or (p.kind == "grid" and not with_grid):
            out[k] = tune.choice(values)
        elif p.kind == "grid":
            out[k] = tune.grid_search(values)
        elif p.kind == "randint":
            out[k] = tune.randint(p.values[0], p.values[1] + 1)
        else:
            out[k] = getattr(tune, p.kind)(*p.values)
    return out
