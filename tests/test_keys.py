"""The one staleness mechanism: a key file written last, and a readable account of what changed."""

from __future__ import annotations

from ecmf.keys import Stamp, diff


def test_diff_names_each_changed_leaf_readably():
    old = {"pseudo": {"threshold": 0.3, "rounds": 2}, "labels_sha256": "a" * 64, "weak": None}
    new = {"pseudo": {"threshold": 0.5, "rounds": 2}, "labels_sha256": "b" * 64, "llm": "x"}
    assert diff(old, new) == ["labels_sha256: <aaaaaaaa> -> <bbbbbbbb>", "llm: added",
                              "pseudo.threshold: 0.3 -> 0.5", "weak: removed"]
    assert diff(old, dict(old)) == []
    assert diff([1, 2], [1, 3], "features") == ["features: [1, 2] -> [1, 3]"]


def test_a_stamp_marks_a_finished_result_and_compares_keys(tmp_path):
    stamp = Stamp(tmp_path / "out" / "key.json")
    assert stamp.read() is None and stamp.changes({"a": 1}) is None  # nothing finished
    stamp.write({"a": 1, "b": {"c": "x"}})
    assert stamp.changes({"a": 1, "b": {"c": "x"}}) == []
    assert stamp.changes({"a": 2, "b": {"c": "x"}}) == ["a: 1 -> 2"]
    assert not list((tmp_path / "out").glob(".*.tmp"))  # written whole, then renamed
