"""The pseudo-label rounds plot: a real PNG, the test-WAF line, and errors on bad input."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest

from ecmf.semi.curves import plot_rounds

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rounds_history(n: int = 4) -> list[dict]:
    """A `rounds/summary.json["rounds"]` list with the keys the plot reads and some it ignores."""
    return [{"round": k, "run": f"runs/r{k}", "val_waf": 0.60 + 0.02 * k,
             "added": 0 if k == 0 else 40 - 5 * k,
             "pseudo_total": sum(40 - 5 * j for j in range(1, k + 1)), "pseudo_rows": 0}
            for k in range(n)]


def test_writes_a_valid_png_in_a_new_folder(tmp_path):
    out = plot_rounds(rounds_history(), tmp_path / "plots" / "deep" / "rounds.png")
    assert out == tmp_path / "plots" / "deep" / "rounds.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000
    height, width = mpimg.imread(out).shape[:2]
    assert width > height > 100


def test_test_waf_adds_a_line(tmp_path):
    plain = plot_rounds(rounds_history(), tmp_path / "plain.png")
    with_test = plot_rounds(rounds_history(), tmp_path / "test.png", test_waf={0: 0.55, 2: 0.58})
    assert with_test.read_bytes()[:8] == PNG_MAGIC
    assert plain.read_bytes() != with_test.read_bytes()


def test_empty_rounds_raise(tmp_path):
    with pytest.raises(ValueError, match="at least one round"):
        plot_rounds([], tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_test_waf_round_not_in_rounds_raises(tmp_path):
    with pytest.raises(ValueError, match=r"\[7\]"):
        plot_rounds(rounds_history(3), tmp_path / "r.png", test_waf={1: 0.6, 7: 0.7})
    assert not (tmp_path / "r.png").exists()
