"""`ecmf submit` and `ecmf jobs` against a real Ray head: the tiny demo as a job, a failing job,
status, logs and stop."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ecmf.cli import main

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]


def write_spec(tmp_path, name: str, lines: list[str]):
    """A job spec in tmp_path whose working_dir is the repository."""
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join([f"name: {name}", *lines,
                               f"runtime_env: {{working_dir: {REPO}}}", ""]))
    return path


def test_demo_job_succeeds_and_writes_its_outputs(ray_head, tmp_path, capsys):
    out = tmp_path / "demo"
    sid = "ecmf-test-demo"
    rc = main(["submit", str(REPO / "jobs" / "demo.yaml"), "--address", ray_head.address,
               "--env", f"ECMF_DEMO_OUT={out}", "--submission-id", sid, "--follow",
               "--timeout", "900"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-3000:]
    assert f"job {sid} SUCCEEDED" in printed.out
    assert printed.out.startswith("equivalent: ray job submit --address ")
    assert "Test set: 16 clips" in printed.out  # the demo's table, streamed from the cluster

    results = json.loads((out / "results.json").read_text())
    assert {"single", "fused", "rounds"} <= set(results)
    assert set(results["single"]) == {"text"}
    assert len(results["rounds"]) == 1 and 0.0 <= results["fused"] <= 1.0
    cands = pd.read_csv(out / "corpus" / "track_all_candidates.csv")["name"]
    sub = pd.read_csv(out / "predict" / "submission.csv")
    assert list(sub.columns) == ["name", "discrete"]
    assert sorted(sub["name"]) == sorted(cands) and len(cands) == 24

    assert main(["jobs", "status", sid, "--address", ray_head.address]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "SUCCEEDED" and status["metadata"]["ecmf_job"] == "ecmf-demo"
    assert main(["jobs", "logs", sid, "--tail", "5", "--address", ray_head.address]) == 0
    tail = capsys.readouterr().out.strip().splitlines()
    assert 0 < len(tail) <= 5 and "results:" in "\n".join(tail)


def test_failing_job_is_reported_failed_with_its_log_tail(ray_head, tmp_path, capsys):
    spec = write_spec(tmp_path, "ecmf-test-fail", ["steps: [train]", "set:",
                                                   "  - corpus.root=/nonexistent/MER2025",
                                                   f"  - workdir={tmp_path / 'run'}"])
    rc = main(["submit", str(spec), "--address", ray_head.address, "--follow",
               "--submission-id", "ecmf-test-fail", "--timeout", "300"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "job ecmf-test-fail FAILED" in err
    assert "last 40 log lines" in err
    assert "corpus root /nonexistent/MER2025 is not a directory" in err  # the driver's error

    assert main(["jobs", "status", "ecmf-test-fail", "--address", ray_head.address]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "FAILED"


def test_jobs_stop_stops_a_running_job(ray_head, tmp_path, capsys):
    spec = write_spec(tmp_path, "ecmf-test-sleep",
                      [("entrypoint: python -c 'import time; print(\"sleeping\", flush=True); "
                        "time.sleep(600)'"), "entrypoint_num_cpus: 0"])
    assert main(["submit", str(spec), "--address", ray_head.address,
                 "--submission-id", "ecmf-test-sleep"]) == 0
    capsys.readouterr()
    assert main(["jobs", "stop", "ecmf-test-sleep", "--address", ray_head.address]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "STOPPED"
    # Following a stopped job reports it and exits non-zero.
    assert main(["jobs", "logs", "ecmf-test-sleep", "--follow", "--timeout", "60",
                 "--address", ray_head.address]) != 0
    assert "ecmf-test-sleep STOPPED" in capsys.readouterr().err
    assert main(["jobs", "list", "--address", ray_head.address]) == 0
    listed = {j["submission_id"]: j["status"] for j in json.loads(capsys.readouterr().out)}
    assert listed["ecmf-test-sleep"] == "STOPPED"


def test_unknown_job_id_and_reused_id_are_named(ray_head, tmp_path, capsys):
    assert main(["jobs", "status", "no-such-job", "--address", ray_head.address]) == 2
    assert "job no-such-job" in capsys.readouterr().err
    spec = write_spec(tmp_path, "ecmf-test-echo", ["entrypoint: echo hello",
                                                   "entrypoint_num_cpus: 0"])
    args = ["submit", str(spec), "--address", ray_head.address, "--submission-id", "ecmf-test-echo"]
    assert main([*args, "--follow", "--timeout", "120"]) == 0
    assert main(args) == 2  # a submission id is unique on a cluster
    assert "ecmf-test-echo" in capsys.readouterr().err
