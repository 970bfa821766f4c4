"""Metrics against scikit-learn, including classes absent from the truth or the predictions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from ecmf.schema import LABELS
from ecmf.train.metrics import (
    accuracy,
    classification_report,
    confusion,
    per_class_f1,
    plot_confusion,
    weighted_f1,
    weighted_f1_from_confusion,
)


@st.composite
def label_pairs(draw, min_size=1):
    c = draw(st.integers(2, 8))
    n = draw(st.integers(min_size, 80))
    # Draw from a subset of classes so that some are absent from y_true, y_pred or both.
    pool_t = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True))
    pool_p = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True))
    t = draw(st.lists(st.sampled_from(pool_t), min_size=n, max_size=n))
    p = draw(st.lists(st.sampled_from(pool_p), min_size=n, max_size=n))
    return np.array(t), np.array(p), c


def sk_f1(t, p, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f1_score(t, p, **kw)


@settings(max_examples=200, deadline=None)
@given(label_pairs())
def test_weighted_f1_matches_sklearn(data):
    t, p, c = data
    assert weighted_f1(t, p, c) == pytest.approx(sk_f1(t, p, average="weighted"), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(label_pairs())
def test_per_class_confusion_and_accuracy_match_sklearn(data):
    t, p, c = data
    labels = list(range(c))
    np.testing.assert_allclose(per_class_f1(t, p, c),
                               sk_f1(t, p, labels=labels, average=None, zero_division=0),
                               atol=1e-12)
    cm = confusion(t, p, c)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, confusion_matrix(t, p, labels=labels))
    assert accuracy(t, p) == pytest.approx(accuracy_score(t, p))


@settings(max_examples=100, deadline=None)
@given(label_pairs(min_size=2), st.data())
def test_summed_shard_confusions_give_the_global_waf(data, draw):
    t, p, c = data
    cut = draw.draw(st.integers(1, len(t) - 1))
    cm = confusion(t[:cut], p[:cut], c) + confusion(t[cut:], p[cut:], c)
    assert weighted_f1_from_confusion(cm) == pytest.approx(weighted_f1(t, p, c), abs=1e-12)


def test_absent_classes_by_hand():
    t = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 5, 5])  # class 2 never predicted, class 5 never true
    f1 = per_class_f1(t, p, 6)
    np.testing.assert_allclose(f1, [2 / 3, 0.8, 0.0, 0.0, 0.0, 0.0])
    assert weighted_f1(t, p, 6) == pytest.approx((2 / 3 * 2 + 0.8 * 2) / 6)
    assert weighted_f1(t, p, 6) == pytest.approx(sk_f1(t, p, average="weighted"))


def test_perfect_and_empty():
    y = np.array([3, 1, 4, 1, 5])
    assert weighted_f1(y, y) == 1.0 and accuracy(y, y) == 1.0
    assert weighted_f1([], []) == 0.0 and accuracy([], []) == 0.0


def test_bad_labels_are_rejected():
    with pytest.raises(ValueError, match="outside"):
        weighted_f1([0, 6], [0, 1], num_classes=6)
    with pytest.raises(ValueError, match="y_pred has 1"):
        confusion([0, 1], [0])
    with pytest.raises(ValueError, match="integer"):
        confusion([0.5], [0])


def test_classification_report_by_name_and_index():
    t = ["happy", "sad", "sad", "neutral"]
    p = ["happy", "sad", "angry", "neutral"]
    rep = classification_report(t, p)
    idx = [LABELS.index(v) for v in t], [LABELS.index(v) for v in p]
    assert rep == classification_report(*idx)
    assert rep["accuracy"] == 0.75
    assert rep["waf"] == pytest.approx(sk_f1(*idx, average="weighted"))
    assert rep["support"] == {"neutral": 1, "angry": 0, "happy": 1, "sad": 2, "worried": 0,
                              "surprise": 0}
    assert rep["per_class_f1"]["sad"] == pytest.approx(2 / 3)
    assert rep["confusion"][3][1] == 1 and isinstance(rep["confusion"], list)
    with pytest.raises(ValueError, match="fear"):
        classification_report(["fear"], ["sad"])


def test_plot_confusion_writes_a_png(tmp_path):
    cm = confusion([0, 1, 2, 2, 5], [0, 2, 2, 2, 4])
    out = plot_confusion(cm, LABELS, tmp_path / "plots" / "cm.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="labels"):
        plot_confusion(cm, LABELS[:3], tmp_path / "bad.png")
