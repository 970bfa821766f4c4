"""A user's first hour with the CLI: config that can be found, errors before Ray that name the
key or the command to run, -v/-q anywhere, and tracebacks only for bugs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from ecmf import __version__
from ecmf.cli import main


def _ecmf(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "ecmf.cli", *args], capture_output=True,
                          check=False, text=True, timeout=timeout)
    return done, time.time() - start



def test_train_on_an_empty_workdir_exits_2_within_5_s_naming_extract(tiny_corpus, tmp_path):
    # The faster of two runs: a run on a machine busy with another test's leftovers measures
    # the machine; the command itself takes about 3 s on an idle 2-core one.
    times = []
    for _ in range(2):
        done, seconds = _ecmf("train", "--set", f"corpus.root={tiny_corpus}",
                              "--set", f"workdir={tmp_path / 'w'}")
        assert done.returncode == 2, done.stderr
        assert "`ecmf extract`" in done.stderr and "Traceback" not in done.stderr
        times.append(seconds)
    assert min(times) < 5, f"{times} s"


def test_a_typo_in_an_encoder_name_fails_before_ray_naming_the_closest(tiny_corpus, tmp_path):
    done, _ = _ecmf("extract", "--set", f"corpus.root={tiny_corpus}",
                    "--set", f"workdir={tmp_path / 'w'}",
                    "--set", "extract.encoders.frames.name=clipp")
    assert done.returncode == 2, done.stderr
    assert "extract.encoders.frames.name" in done.stderr and "did you mean 'clip'?" in done.stderr
    assert "embedded local Ray" not in done.stderr and not (tmp_path / "w").exists()


def test_config_prints_the_resolved_yaml_with_comments(capsys):
    assert main(["config", "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["train"]["epochs"] == 3
    lines = out.splitlines()
    train = lines.index(next(line for line in lines if line.startswith("train:")))
    epochs = next(line for line in lines[train:] if line.startswith("  epochs:"))
    assert epochs.startswith("  epochs: 3  # ") and len(epochs) > len("  epochs: 3  # ") + 5


def test_version_and_verbosity_anywhere(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ecmf {__version__}"
    import logging

    for argv, level in [(["config", "-v"], logging.DEBUG), (["-q", "config"], logging.WARNING),
                        (["config", "--set", "train.epochs=3", "-q"], logging.WARNING),
                        (["config"], logging.INFO)]:
        assert main(argv) == 0
        assert logging.getLogger().level == level, argv
    with pytest.raises(SystemExit):
        main(["config", "-v", "-q"])  # one or the other


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_an_empty_workdir_is_an_error_for_evaluate_and_predict(command, tiny_corpus, tmp_path,
                                                               capsys, no_ray):
    code = main([command, "--set", f"corpus.root={tiny_corpus}",
                 "--set", f"workdir={tmp_path / 'w'}"])
    err = capsys.readouterr().err
    assert code == 2 and "`ecmf " in err, err


def test_a_missing_training_run_names_train_before_ray(tiny_corpus, tmp_path, capsys, no_ray):
    wd = tmp_path / "w"
    _one_feature_store(wd / "features" / "store")
    for command in ("pseudo-label", "predict"):
        code = main([command, "--set", f"corpus.root={tiny_corpus}", "--set", f"workdir={wd}"])
        err = capsys.readouterr().err
        assert code == 2 and "`ecmf train`" in err, (command, err)


def _one_feature_store(store):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ecmf import schema

    store.mkdir(parents=True)
    vec = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4, np.float32)), 4)
    pq.write_table(pa.table({schema.SAMPLE_ID: ["a"], "error": [""], "feat_text": vec,
                             "mask_text": [True]}), store / "part-0.parquet")


def test_a_feature_name_not_in_the_store_fails_before_ray(tiny_corpus, tmp_path, capsys,
                                                          no_ray):
    wd = tmp_path / "w"
    _one_feature_store(wd / "features" / "store")
    code = main(["train", "--set", f"corpus.root={tiny_corpus}", "--set", f"workdir={wd}",
                 "--set", "train.features=text,audoi"])
    err = capsys.readouterr().err
    assert code == 2 and "config train.features:" in err and "['audoi'] are not there" in err


def test_only_a_users_error_exits_2_a_bug_shows_its_traceback(monkeypatch, tiny_corpus,
                                                              tmp_path, capsys):
    import ecmf.stages.evaluate

    def bug(cfg, truth=None):
        return {}["no such key"]  # a KeyError deep inside a stage is a bug, not a usage error

    monkeypatch.setattr(ecmf.stages.evaluate, "evaluate", bug)
    with pytest.raises(KeyError, match="no such key"):
        main(["evaluate", "--set", f"workdir={tmp_path}"])


def test_bad_override_fails_naming_the_key(capsys):
    assert main(["train", "--set", "train.folds=1"]) == 2
    assert "train.folds" in capsys.readouterr().err
    assert main(["train", "--set", "train.nonsense=3"]) == 2
    assert "nonsense" in capsys.readouterr().err
