"""Submission CSV: a correct file passes; every defect fails naming the file and the names."""

from __future__ import annotations

import pandas as pd
import pytest

from ecmf.train.submission import check_submission, write_submission

CANDIDATES = ["sample_00000003", "sample_00000001", "sample_00000002", "NA"]


def predictions(**extra) -> pd.DataFrame:
    ids = ["sample_00000001", "sample_00000002", "sample_00000003", "NA", "sample_pool_9"]
    labels = ["happy", "sad", "neutral", "worried", "angry"]
    return pd.DataFrame({"sample_id": ids, "pred": labels, "confidence": 0.9, **extra})


def write_csv(path, rows, columns=("name", "discrete")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_written_submission_follows_the_candidates_and_passes(tmp_path):
    out = write_submission(predictions(), pd.Series(CANDIDATES), tmp_path / "sub" / "s.csv")
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["name", "discrete"]
    assert df["name"].tolist() == CANDIDATES  # candidate order; the pool row is left out
    assert df["discrete"].tolist() == ["neutral", "happy", "sad", "worried"]
    check_submission(out, CANDIDATES)


def test_write_refuses_incomplete_or_bad_predictions(tmp_path):
    path = tmp_path / "s.csv"
    with pytest.raises(ValueError, match="sample_00000002") as err:
        write_submission(predictions().drop(index=1), CANDIDATES, path)
    assert "no prediction" in str(err.value) and str(path) in str(err.value)
    bad = predictions()
    bad.loc[0, "pred"] = "fear"
    with pytest.raises(ValueError, match="fear"):
        write_submission(bad, CANDIDATES, path)
    dup = pd.concat([predictions(), predictions().iloc[[2]]])
    with pytest.raises(ValueError, match="repeat sample ids.*sample_00000003"):
        write_submission(dup, CANDIDATES, path)
    with pytest.raises(ValueError, match="lack columns"):
        write_submission(predictions().rename(columns={"pred": "label"}), CANDIDATES, path)
    with pytest.raises(ValueError, match="candidate list repeats"):
        write_submission(predictions(), CANDIDATES + ["NA"], path)
    assert not path.exists()


GOOD = [[n, "happy"] for n in CANDIDATES]


@pytest.mark.parametrize("rows, columns, expected", [
    (GOOD[:2] + GOOD[3:], ("name", "discrete"), r"missing candidates \(1: 'sample_00000002'\)"),
    (GOOD + [GOOD[1]], ("name", "discrete"), r"duplicate names \(1: 'sample_00000001'\)"),
    (GOOD + [["sample_x", "sad"]], ("name", "discrete"), r"extra names .*'sample_x'"),
    (GOOD[:3] + [["NA", "Happy"]], ("name", "discrete"), r"unknown labels.*'NA': 'Happy'"),
    (GOOD[:3] + [["NA", ""]], ("name", "discrete"), r"unknown labels.*'NA': ''"),
    (GOOD, ("name", "label"), r"columns are \['name', 'label'\]"),
    ([[*r, 0.9] for r in GOOD], ("name", "discrete", "conf"), "expected \\['name', 'discrete'\\]"),
])
def test_each_defect_is_named(tmp_path, rows, columns, expected):
    path = write_csv(tmp_path / "bad.csv", rows, columns)
    with pytest.raises(ValueError, match=expected) as err:
        check_submission(path, CANDIDATES)
    assert str(path) in str(err.value)


def test_every_defect_is_reported_at_once(tmp_path):
    rows = [GOOD[0], GOOD[0], ["sample_x", "joy"]]
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(ValueError) as err:
        check_submission(path, CANDIDATES)
    msg = str(err.value)
    for part in ("duplicate", "missing candidates (3:", "extra names", "'joy'"):
        assert part in msg


def test_long_lists_are_shortened(tmp_path):
    candidates = [f"s{i:03d}" for i in range(50)]
    path = write_csv(tmp_path / "short.csv", [["s000", "sad"]])
    with pytest.raises(ValueError, match="missing candidates \\(49: .* and 39 more\\)"):
        check_submission(path, candidates)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        check_submission(tmp_path / "nope.csv", CANDIDATES)
