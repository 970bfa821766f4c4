"""A search's outputs: `trials.csv` (one row per trial), `val_waf.png` (validation WAF over trials
and epochs) and `best.yaml` (the best trial as config overrides that `ecmf train` takes)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ecmf.config import Config, to_dict
from ecmf.tune.space import trial_config

log = logging.getLogger(__name__)

# Tune's trial states, as a reader of trials.csv wants them.
_STATUS = {"TERMINATED": "completed", "ERROR": "error"}


def load_trials(experiment: str | Path, keys: list[str], base_epochs: int
                ) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], dict[str, dict]]:
    """Every trial of a Tune experiment: a summary table, per-epoch histories, configs by id."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(experiment))
    rows, histories, configs = [], {}, {}
    for i, trial in enumerate(sorted(analysis.trials, key=lambda t: t.trial_id)):
        df = analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame())
        if "epoch" in df:  # a trial restarted by a resume logs its epochs again: keep the last
            df = df.drop_duplicates("epoch", keep="last").sort_values("epoch")
            histories[trial.trial_id] = df[["epoch", "val_waf"]].reset_index(drop=True)
        epochs = int(trial.config.get("epochs", base_epochs))
        run = len(histories.get(trial.trial_id, ()))
        status = _STATUS.get(trial.status, "unfinished")
        if status == "completed" and run < epochs:
            status = "stopped early"
        best = histories[trial.trial_id]["val_waf"] if run else pd.Series(dtype=float)
        configs[trial.trial_id] = {k: trial.config[k] for k in keys if k in trial.config}
        row: dict[str, Any] = {"trial": i, "trial_id": trial.trial_id, "status": status}
        for k in keys:
            v = trial.config.get(k)
            row[k] = (v or "all") if k == "features" else v
        h = histories.get(trial.trial_id)
        row.update({"best_val_waf": float(best.max()) if run else float("nan"),
                    "best_epoch": int(h.loc[best.idxmax(), "epoch"]) if run else -1,
                    "epochs_run": run, "epochs": epochs,
                    "train_rows": int(df["train_rows"].iloc[-1])
                    if "train_rows" in df and len(df) else 0,
                    "seconds": round(float(df["time_total_s"].iloc[-1]), 2)
                    if "time_total_s" in df and len(df) else 0.0,
                    "error": _first_line(trial.error_file)})
        rows.append(row)
    return pd.DataFrame(rows), histories, configs


def _first_line(error_file: str | None) -> str:
    if not error_file or not Path(error_file).is_file():
        return ""
    lines = [ln for ln in Path(error_file).read_text().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def plot_val_waf(table: pd.DataFrame, histories: dict[str, pd.DataFrame], path: Path) -> Path:
    """Left: each trial's validation WAF per epoch; right: each trial's best, by trial number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    best_id = table.loc[table["best_val_waf"].idxmax(), "trial_id"] if table[
        "best_val_waf"].notna().any() else None
    for tid, h in histories.items():
        is_best = tid == best_id
        left.plot(h["epoch"] + 1, h["val_waf"], marker="o", ms=3, lw=2.2 if is_best else 0.9,
                  color="C3" if is_best else "0.55", alpha=1.0 if is_best else 0.7,
                  label="best trial" if is_best else None, zorder=3 if is_best else 2)
    left.set(xlabel="epoch", ylabel="validation WAF (mean over folds)",
             title="validation WAF per epoch (a short line: stopped early)")
    if best_id is not None:
        left.legend(loc="lower right")
    colors = {"completed": "C0", "stopped early": "C1", "error": "C3", "unfinished": "0.6"}
    for status, part in table.groupby("status"):
        right.scatter(part["trial"], part["best_val_waf"].fillna(0.0), label=status,
                      color=colors.get(status, "0.3"), s=28)
    right.set(xlabel="trial", ylabel="best validation WAF", title="best validation WAF per trial")
    right.legend(loc="best")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _diff(value: Any, default: Any) -> Any:
    """What `value` changes in `default`: a nested mapping of overrides (None: nothing)."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {k: d for k, v in value.items()
               if (d := _diff(v, default.get(k, _MISSING))) is not None}
        # Keys of a default mapping the config dropped (`extract.encoders.audio: null`).
        out.update({k: None for k in default if k not in value})
        return out or None
    return None if value == default else value


_MISSING = object()


def best_overrides(cfg: Config, point: dict) -> dict:
    """The YAML of overrides of the best trial: the search config's own overrides (workdir, ray,
    train defaults...), without `tune`, and the point's train keys."""
    train = trial_config(cfg.train, point)
    full = to_dict(dataclasses.replace(cfg, train=train))
    full.pop("tune")
    defaults = to_dict(Config())
    defaults.pop("tune")
    over = _diff(full, defaults) or {}
    over["workdir"] = cfg.workdir  # always named: the run trains on the searched features
    over.setdefault("train", {}).update({k: getattr(train, k) for k in point})
    return over


def write_best_yaml(cfg: Config, row: pd.Series, point: dict, path: Path, folds: int) -> Path:
    header = (f"# ecmf tune: best of the search (trial {row['trial_id']}): validation WAF "
              f"{row['best_val_waf']:.4f} at epoch {int(row['best_epoch']) + 1}, mean over "
              f"{folds} folds.\n# Train it with: ecmf train {path}\n")
    path.write_text(header + yaml.safe_dump(best_overrides(cfg, point), sort_keys=False))
    return path


def apply_best(cfg: Config) -> Config:
    """`cfg` with the train keys of its workdir's `tune/best.yaml`, where `tune.apply_best` is
    on and a search has written one (else `cfg` as it is)."""
    path = Path(cfg.workdir) / "tune" / "best.yaml"
    if not cfg.tune.apply_best or not path.is_file():
        return cfg
    best = (yaml.safe_load(path.read_text()) or {}).get("train") or {}
    changed = {k: v for k, v in best.items() if getattr(cfg.train, k) != v}
    log.info("train keys of the search's best trial (%s, tune.apply_best): %s", path,
             changed or "the same as configured")
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **best))

