"""MER2025-SEMI submission files: a CSV with columns `name, discrete`, one row per candidate
clip."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ecmf.schema import LABELS, PRED, SAMPLE_ID

COLUMNS = ["name", "discrete"]


def _names(values, limit: int = 10, quote: bool = True) -> str:
    values = list(values)
    shown = ", ".join(repr(v) if quote else str(v) for v in values[:limit])
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"{len(values)}: {shown}{more}"


def _candidate_list(candidates, where: str) -> list[str]:
    names = [str(c) for c in (candidates.tolist() if isinstance(candidates, pd.Series)
                              else candidates)]
    dup = pd.Series(names)[pd.Series(names).duplicated()].unique()
    if len(dup):
        raise ValueError(f"{where}: the candidate list repeats names ({_names(dup)})")
    return names


def write_submission(pred: pd.DataFrame, candidates, path, labels=LABELS) -> Path:
    """Write `name,discrete` rows for `candidates` (in their order) from `pred`'s
    `sample_id, pred` columns, then check the file; rows of `pred` beyond the candidates are
    ignored (predictions over the whole pool are fine)."""
    out = Path(path)
    missing_cols = [c for c in (SAMPLE_ID, PRED) if c not in pred.columns]
    if missing_cols:
        raise ValueError(f"submission {out}: predictions lack columns {missing_cols}; "
                         f"have {list(pred.columns)}")
    names = _candidate_list(candidates, f"submission {out}")
    ids = pred[SAMPLE_ID].astype(str)
    dup = ids[ids.duplicated()].unique()
    if len(dup):
        raise ValueError(f"submission {out}: predictions repeat sample ids ({_names(dup)})")
    by_id = pd.Series(pred[PRED].to_numpy(), index=ids.to_numpy())
    absent = [n for n in names if n not in by_id.index]
    if absent:
        raise ValueError(f"submission {out}: no prediction for candidates ({_names(absent)})")
    chosen = by_id.loc[names]
    unknown = sorted({str(v) for v in chosen if v not in labels})
    if unknown:
        raise ValueError(f"submission {out}: predicted labels {unknown} are not in {list(labels)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"name": names, "discrete": chosen.to_numpy()}).to_csv(out, index=False)
    check_submission(out, names, labels)
    return out


def check_submission(path, candidates, labels=LABELS) -> None:
    """Raise ValueError naming `path` and every defect: wrong columns, duplicate, missing or extra
    names, labels outside `labels` (the run's label set; MER2025's six by default)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"submission {path} does not exist")
    # Read as text with no NA guessing: a clip named "NA" or a blank label must stay visible.
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(df.columns) != COLUMNS:
        raise ValueError(f"submission {path}: columns are {list(df.columns)}; expected {COLUMNS}")
    names = _candidate_list(candidates, f"submission {path}")
    problems = []
    dup = df.loc[df["name"].duplicated(), "name"].unique()
    if len(dup):
        problems.append(f"duplicate names ({_names(dup)})")
    have = set(df["name"])
    missing = [n for n in names if n not in have]
    if missing:
        problems.append(f"missing candidates ({_names(missing)})")
    wanted = set(names)
    extra = [n for n in df["name"].unique() if n not in wanted]
    if extra:
        problems.append(f"extra names not among the candidates ({_names(extra)})")
    bad = df.loc[~df["discrete"].isin(list(labels))]
    if len(bad):
        pairs = [f"{n!r}: {lab!r}" for n, lab in zip(bad["name"], bad["discrete"])]
        problems.append(f"unknown labels, expected one of {list(labels)} "
                        f"({_names(pairs, quote=False)})")
    if problems:
        raise ValueError(f"submission {path}: " + "; ".join(problems))
