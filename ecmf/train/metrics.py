"""Classification metrics in NumPy, computed from a confusion matrix so that workers can sum counts.

`weighted_f1` equals scikit-learn's `f1_score(average="weighted")` (the challenge's WAF).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ecmf import schema
from ecmf.schema import LABELS


def _as_labels(y, num_classes: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class indices, got shape {y.shape}")
    if y.size == 0:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{name}: expected integer class indices, got dtype {y.dtype}")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise ValueError(f"{name}: class indices {sorted(set(y[bad].tolist()))[:10]} are outside "
                         f"[0, {num_classes})")
    return y.astype(np.int64)


def _pair(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(y_true, num_classes, "y_true")
    p = _as_labels(y_pred, num_classes, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} labels but y_pred has {p.size}")
    return t, p


def confusion(y_true, y_pred, num_classes: int = 6) -> np.ndarray:
    """Confusion counts `[C, C]` (int64), rows = true class, columns = predicted class."""
    t, p = _pair(y_true, y_pred, num_classes)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).astype(np.int64)


def _f1_per_class(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm)
    denom = cm.sum(1) + cm.sum(0)  # 2tp + fp + fn
    # zero_division=0 as scikit-learn's default: a class never true nor predicted scores 0.
    return np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def weighted_f1_from_confusion(cm) -> float:
    """Support-weighted mean of per-class F1 (WAF) from confusion counts; 0.0 when empty."""
    f1 = _f1_per_class(cm)
    support = np.asarray(cm, dtype=np.float64).sum(1)
    total = support.sum()
    return float((f1 * support).sum() / total) if total > 0 else 0.0


def weighted_f1(y_true, y_pred, num_classes: int = 6) -> float:
    """WAF: scikit-learn's `f1_score(y_true, y_pred, average="weighted")`."""
    return weighted_f1_from_confusion(confusion(y_true, y_pred, num_classes))


def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches; 0.0 for no samples."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {t.shape} but y_pred has {p.shape}")
    return float((t == p).mean()) if t.size else 0.0


def per_class_f1(y_true, y_pred, num_classes: int = 6) -> np.ndarray:
    """F1 of each class index `0..C-1`; 0.0 for a class never true nor predicted."""
    return _f1_per_class(confusion(y_true, y_pred, num_classes))


def _to_index(y, labels: Sequence[str], name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.size and (y.dtype.kind in "USO"):
        lookup = {lab: i for i, lab in enumerate(labels)}
        unknown = sorted({str(v) for v in y.tolist() if v not in lookup})
        if unknown:
            raise ValueError(f"{name}: unknown labels {unknown[:10]}; expected one of "
                             f"{list(labels)}")
        return np.array([lookup[v] for v in y.tolist()], dtype=np.int64)
    return y


def classification_report(y_true, y_pred, labels: Sequence[str] = LABELS) -> dict:
    """WAF, accuracy, per-class F1 and support, confusion; labels as indices or class names."""
    labels = list(labels)
    t = _to_index(y_true, labels, "y_true")
    p = _to_index(y_pred, labels, "y_pred")
    cm = confusion(t, p, len(labels))
    f1 = _f1_per_class(cm)
    return {
        "waf": weighted_f1_from_confusion(cm),
        "accuracy": accuracy(t, p),
        "per_class_f1": {lab: float(v) for lab, v in zip(labels, f1)},
        "support": {lab: int(n) for lab, n in zip(labels, cm.sum(1))},
        "confusion": cm.tolist(),
    }


def plot_confusion(cm, labels: Sequence[str], path) -> Path:
    """Write a PNG heat map of `cm` (colour: row-normalised recall; text: counts)."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend switch and no GUI.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    labels = list(labels)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {len(labels)} "
                         f"labels {labels}")
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    size = 1.0 + 0.8 * len(labels)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def score(y_true_names, y_pred_names, labels: Sequence[str] = LABELS) -> dict:
    """`classification_report` of two sequences of class names of `labels`."""
    yt = schema.label_indices(list(y_true_names), "y_true", labels)
    yp = schema.label_indices(list(y_pred_names), "y_pred", labels)
    return classification_report(yt, yp, labels)


def format_per_class(report: dict, title: str) -> str:
    """A `classification_report` as the table a person reads after `train` and `evaluate`:
    precision, recall, F1 and support per class (from its confusion matrix), then WAF."""
    labels = list(report["per_class_f1"])
    cm = np.asarray(report.get("confusion") or np.zeros((len(labels), len(labels))), dtype=float)
    predicted, actual = cm.sum(0), cm.sum(1)
    diag = np.diag(cm) if cm.size else np.zeros(len(labels))
    width = max(len("class"), *(len(lab) for lab in labels))
    lines = [title, f"  {'class':<{width}}  precision  recall     f1  support"]
    for i, lab in enumerate(labels):
        prec = diag[i] / predicted[i] if predicted[i] else 0.0
        rec = diag[i] / actual[i] if actual[i] else 0.0
        f1 = report["per_class_f1"][lab]
        lines.append(f"  {lab:<{width}}  {prec:9.3f}  {rec:6.3f}  {f1:5.3f}"
                     f"  {report['support'][lab]:7d}")
    total = sum(report["support"].values())
    lines.append(f"  {'weighted F1':<{width}}  {'':9}  {'':6}  {report['waf']:5.3f}  {total:7d}"
                 f"   (accuracy {report['accuracy']:.3f})")
    return "\n".join(lines)
