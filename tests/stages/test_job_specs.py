"""Job specs (jobs/*.yaml) and `ecmf submit --dry-run`, without a cluster."""

from __future__ import annotations

import json
import shlex
import socket
from pathlib import Path

import pytest
import yaml

from ecmf.cli import main
from ecmf.runtime import jobs as client_api
from ecmf.stages import HELP as COMMANDS
from ecmf.stages import submit as jobs
from ecmf.stages.common import load_config

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "jobs").glob("*.yaml"))
# The paper's pipeline, in order: mer2025-full.yaml runs these and each has a spec of its own.
STAGES = ["enrich", "extract", "train", "refine", "pseudo-label", "predict", "evaluate"]
FULL = ["enrich", "extract", "tune", "train", "refine", "pseudo-label", "predict", "evaluate"]


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_issue_s_job_specs_exist():
    names = {p.stem for p in SPECS}
    assert {"mer2025-full", *STAGES, "pseudo-label-pool", "tune", "demo"} <= names
    assert _raw(REPO / "jobs" / "mer2025-full.yaml")["steps"] == FULL
    for stage in STAGES:
        assert _raw(REPO / "jobs" / f"{stage}.yaml")["steps"] == [stage]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_spec_names_entrypoint_config_runtime_env_and_driver_resources(path):
    raw = _raw(path)
    assert raw.get("steps") and raw.get("config")
    renv = raw["runtime_env"]
    assert renv["working_dir"] == ".." and renv["env_vars"]
    assert {".venv", "demo-out", "runs"} <= set(renv["excludes"])
    for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
        assert key in raw, f"{path.name}: {key}"
    assert all(step.split()[0] in COMMANDS for step in raw["steps"])
    spec = jobs.load_job_spec(path)
    assert spec.runtime_env["working_dir"] == str(REPO)
    assert spec.entrypoint_memory >= 2 * 2**30
    for step, part in zip(raw["steps"], spec.entrypoint.split(" && "), strict=True):
        assert part.startswith(f"ecmf {step.split()[0]} {raw['config']}")


@pytest.mark.parametrize("name", ["mer2025.yaml", "demo-tiny.yaml"])
def test_stage_configs_load_and_name_registered_components(name):
    from ecmf.enrichment.backends import BACKENDS
    from ecmf.features.encoders import ENCODERS

    cfg = load_config(REPO / "jobs" / "configs" / name)
    assert cfg.enrich.backend in BACKENDS
    assert all(e.name in ENCODERS for e in cfg.extract.encoders.values())
    if name == "mer2025.yaml":
        # Shared storage: the mount of cluster/ on every node.
        for path in (cfg.workdir, cfg.corpus.root, cfg.train.storage_path):
            assert path.startswith("/mnt/shared/"), path
        assert cfg.train.use_gpu
        # The paper's LLM votes, by vLLM on the GPU workers, feed the label refinement.
        assert cfg.enrich.backend == "vllm" and cfg.enrich.tasks == ["enrich", "vote"]
        assert cfg.refine.enabled and cfg.refine.use_llm_votes and cfg.refine.weights["llm"] > 0
        assert all(e.num_gpus > 0 for k, e in cfg.extract.encoders.items() if k in
                   ("frames", "audio"))


def _dry_run_steps(capsys, spec: str, with_plan: bool = False):
    """`ecmf submit SPEC --dry-run`, read back from what it prints: each step's words (and
    the plan lines printed after the equivalent command)."""
    assert main(["submit", str(REPO / "jobs" / spec), "--dry-run", "--submission-id", "dry"]) == 0
    lines = capsys.readouterr().out.splitlines()
    words = shlex.split(lines[0].removeprefix("equivalent: "))
    entrypoint = words[words.index("--") + 1:]
    assert len(entrypoint) == 1, entrypoint
    steps = [shlex.split(step) for step in entrypoint[0].split(" && ")]
    return (steps, lines[1:]) if with_plan else steps


def _config_of(step: list[str]):
    """The config a step of the entrypoint loads: its file and its --set items."""
    sets = [step[i + 1] for i, w in enumerate(step) if w == "--set"]
    return load_config(REPO / step[2], sets)


def test_full_job_dry_run_shows_the_paper_s_stages_in_order(capsys):
    steps, plan = _dry_run_steps(capsys, "mer2025-full.yaml", with_plan=True)
    assert [s[:2] for s in steps] == [["ecmf", stage] for stage in FULL]
    assert {s[2] for s in steps} == {"jobs/configs/mer2025.yaml"}
    assert plan[0] == "steps: " + " -> ".join(FULL)
    cfg = _config_of(steps[0])
    assert cfg.enrich.backend == "vllm" and "vote" in cfg.enrich.tasks
    assert cfg.refine.enabled and cfg.refine.use_llm_votes
    assert cfg.tune.apply_best  # the stages after the search train with its best trial


def test_tune_job_dry_run_shows_a_search_space_of_more_than_one_point(capsys):
    from ecmf.tune.space import TUNABLE, parse_space, search_points

    (step,), plan = _dry_run_steps(capsys, "tune.yaml", with_plan=True)
    assert step[:3] == ["ecmf", "tune", "jobs/configs/mer2025.yaml"]
    cfg = _config_of(step)
    assert plan[1] == (f"tune: {cfg.tune.num_samples} trials over {sorted(cfg.tune.space)} "
                       f"({cfg.tune.num_samples} distinct points)")
    space = parse_space(cfg.tune.space)
    assert set(space) <= set(TUNABLE) and all(p.kind != "fixed" for p in space.values())
    points = search_points(cfg.tune, cfg.train)  # each a valid train config
    assert len(points) == cfg.tune.num_samples > 1
    distinct = {tuple(sorted(p.items())) for p in points}
    assert len(distinct) == len(points)
    for key in space:  # every searched key takes more than one value over the trials
        assert len({p[key] for p in points}) > 1, key


def test_entrypoint_chains_steps_with_the_config_and_every_set():
    spec = jobs.load_job_spec(REPO / "jobs" / "pseudo-label-pool.yaml", ["train.epochs=7"],
                              ["EXTRA=1"])
    parts = spec.entrypoint.split(" && ")
    assert [shlex.split(p)[:3] for p in parts] == [
        ["ecmf", "pseudo-label", "jobs/configs/mer2025.yaml"],
        ["ecmf", "predict", "jobs/configs/mer2025.yaml"]]
    for part in parts:
        words = shlex.split(part)
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        assert sets[0] == "pseudo.rounds=5" and sets[-1] == "train.epochs=7"
    assert spec.runtime_env["env_vars"]["EXTRA"] == "1"
    assert spec.runtime_env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert spec.metadata["ecmf_job"] == "mer2025-pseudo-label-pool"


def test_demo_step_keeps_its_shell_variable():
    spec = jobs.load_job_spec(REPO / "jobs" / "demo.yaml")
    assert spec.entrypoint == 'ecmf demo jobs/configs/demo-tiny.yaml --out "$ECMF_DEMO_OUT"'


def test_equivalent_ray_job_submit_line_parses_with_ray_s_own_cli():
    from ray.dashboard.modules.job.cli import submit

    spec = jobs.load_job_spec(REPO / "jobs" / "mer2025-full.yaml")
    line = jobs.ray_job_submit_command(spec, "http://10.0.0.5:8265", "sid-1")
    words = shlex.split(line)
    assert words[:3] == ["ray", "job", "submit"]
    params = submit.make_context("submit", words[3:]).params
    assert params["address"] == "http://10.0.0.5:8265" and params["submission_id"] == "sid-1"
    assert json.loads(params["runtime_env_json"]) == spec.runtime_env
    assert params["entrypoint"] == (spec.entrypoint,)
    assert params["entrypoint_memory"] == 8 * 2**30 and params["entrypoint_num_cpus"] == 1.0


@pytest.mark.parametrize("value,expected", [(1024, 1024), ("8GiB", 8 * 2**30), ("512Mi", 2**29),
                                            ("4G", 4 * 10**9), ("1.5gib", 3 * 2**29)])
def test_parse_memory(value, expected):
    assert jobs.parse_memory(value, "x") == expected


@pytest.mark.parametrize("value", ["lots", -1, True, "8 parsecs"])
def test_parse_memory_rejects(value):
    with pytest.raises(jobs.JobError, match="entrypoint_memory"):
        jobs.parse_memory(value, "spec: entrypoint_memory")


def _spec(tmp_path, **raw) -> Path:
    raw.setdefault("runtime_env", {"working_dir": str(REPO)})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("raw,message", [
    ({"steps": ["train"], "entrypont_num_cpus": 1}, r"unknown key\(s\) \['entrypont_num_cpus'\]"),
    ({"steps": ["train"], "entrypoint": "echo"}, "exactly one of `steps`"),
    ({"steps": ["trian"]},
     r"steps\[0\]: unknown ecmf command 'trian'; did you mean 'train'\? known: \['demo'"),
    ({"steps": ["submit"]}, "unknown ecmf command 'submit'"),
    ({"steps": ["train"], "config": "jobs/configs/nope.yaml"},
     "config jobs/configs/nope.yaml not found under working_dir"),
    ({"steps": ["train"], "config": "jobs/configs/mer2025.yaml", "set": ["train.epocs=3"]},
     r"config jobs/configs/mer2025.yaml: unknown key\(s\) \['epocs'\]"),
    ({"steps": ["train"], "runtime_env": {"working_dir": "/nonexistent/dir"}},
     "working_dir /nonexistent/dir is not a directory"),
    ({"steps": ["train"], "entrypoint_num_gpus": "one"}, "entrypoint_num_gpus: expected a number"),
    ({"steps": "train"}, "steps: expected a list"),
])
def test_bad_specs_name_the_file_and_the_key(tmp_path, raw, message):
    with pytest.raises(jobs.JobError, match=message) as e:
        jobs.load_job_spec(_spec(tmp_path, **raw))
    assert str(tmp_path / "job.yaml") in str(e.value)


def test_submission_ids_are_readable_and_unique():
    a = client_api.new_submission_id("mer2025 train!")
    b = client_api.new_submission_id("mer2025 train!")
    assert a.startswith("mer2025-train-") and a != b


def test_address_precedence(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert client_api.resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://a:8265")
    assert client_api.resolve_address(None) == "http://a:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://b:8265")
    assert client_api.resolve_address(None) == "http://b:8265"
    assert client_api.resolve_address("http://c:8265") == "http://c:8265"


def test_submit_dry_run_prints_the_ray_line_and_contacts_nothing(capsys):
    rc = main(["submit", str(REPO / "jobs" / "train.yaml"), "--dry-run",
               "--address", "http://127.0.0.1:9", "--submission-id", "dry-1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("equivalent: ray job submit --address http://127.0.0.1:9 "
                          "--submission-id dry-1 ")
    assert "submitted" not in out


def test_unreachable_cluster_and_missing_id_are_named(capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert main(["jobs", "status", "some-id", "--address", address]) == 2
    assert f"cannot reach the Ray Jobs API at {address}" in capsys.readouterr().err
    assert main(["jobs", "status", "--address", address]) == 2
    assert "give the job's submission id" in capsys.readouterr().err


class _Client:
    """Stands in for a JobSubmissionClient: records what would be sent, or fails like Ray."""

    def __init__(self, error: str | None = None):
        self.sent, self.error = {}, error

    def submit_job(self, **kwargs):
        if self.error:  # the Jobs API quoting the runtime env back, as its errors can
            raise RuntimeError(f"{self.error}: {kwargs['runtime_env']}")
        self.sent = kwargs
        return kwargs["submission_id"]


def _runtime_env_printed(out: str) -> dict:
    words = shlex.split(out.splitlines()[0].removeprefix("equivalent: "))
    return json.loads(words[words.index("--runtime-env-json") + 1])


@pytest.mark.parametrize("name,secret", [
    ("HF_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("WANDB_API_KEY", True),
    ("RAY_AUTH_TOKEN", True), ("db_password", True), ("SMTP_PASSWD", True),
    ("GOOGLE_APPLICATION_CREDENTIALS", True), ("OPENAI_APIKEY", True), ("hfToken", True),
    ("RAY_AUTH_MODE", True), ("OMP_NUM_THREADS", False), ("HF_HOME", False),
    ("HF_HUB_OFFLINE", False), ("ECMF_DEMO_OUT", False), ("TOKENIZERS_PARALLELISM", False),
    ("AUTHOR", False)])
def test_secret_names(name, secret):
    assert jobs.is_secret_name(name) is secret


def test_masked_env_hides_secret_names_and_the_given_ones():
    env = {"HF_TOKEN": "t", "OMP_NUM_THREADS": "4", "ECMF_DEMO_OUT": "/x"}
    assert jobs.masked_env(env) == {"HF_TOKEN": "***", "OMP_NUM_THREADS": "4",
                                    "ECMF_DEMO_OUT": "/x"}
    assert jobs.masked_env(env, {"ECMF_DEMO_OUT"})["ECMF_DEMO_OUT"] == "***"
    assert env["HF_TOKEN"] == "t"  # pure: the caller's dict keeps its values


def test_submit_env_value_is_never_printed_but_is_sent(monkeypatch, capsys):
    spec = str(REPO / "jobs" / "train.yaml")
    assert main(["submit", spec, "--env", "HF_TOKEN=abc", "--env", "ECMF_X=plain-value",
                 "--dry-run", "--submission-id", "dry-1"]) == 0
    printed = capsys.readouterr()
    assert "abc" not in printed.out + printed.err
    assert "plain-value" not in printed.out + printed.err  # every --env value, whatever its name
    env = _runtime_env_printed(printed.out)["env_vars"]
    assert env["HF_TOKEN"] == env["ECMF_X"] == "***" and env["HF_HUB_OFFLINE"] == "1"
    assert "ECMF_X, HF_TOKEN shown as ***" in printed.err

    client = _Client()
    monkeypatch.setattr(client_api, "connect", lambda address: client)
    assert main(["submit", spec, "--env", "HF_TOKEN=abc", "--submission-id", "sent-1"]) == 0
    printed = capsys.readouterr()
    assert "abc" not in printed.out + printed.err and "submitted sent-1" in printed.out
    assert client.sent["runtime_env"]["env_vars"]["HF_TOKEN"] == "abc"


def test_a_cluster_error_quoting_the_runtime_env_is_redacted(monkeypatch, capsys):
    monkeypatch.setattr(client_api, "connect", lambda address: _Client("runtime_env rejected"))
    assert main(["submit", str(REPO / "jobs" / "train.yaml"), "--env", "HF_TOKEN=hf_s3cr3t",
                 "--submission-id", "bad-1"]) == 2
    err = capsys.readouterr().err
    assert "runtime_env rejected" in err and "'HF_TOKEN': '***'" in err
    assert "hf_s3cr3t" not in err


def test_secret_looking_env_vars_of_a_spec_file_are_masked(tmp_path, capsys):
    path = _spec(tmp_path, steps=["train"], runtime_env={
        "working_dir": str(REPO),
        "env_vars": {"WANDB_API_KEY": "wandb-s3cr3t", "OMP_NUM_THREADS": "4"}})
    assert main(["submit", str(path), "--dry-run", "--submission-id", "dry-2"]) == 0
    printed = capsys.readouterr()
    assert "wandb-s3cr3t" not in printed.out + printed.err
    assert _runtime_env_printed(printed.out)["env_vars"] == {"WANDB_API_KEY": "***",
                                                             "OMP_NUM_THREADS": "4"}
    spec = jobs.load_job_spec(path)
    assert spec.runtime_env["env_vars"]["WANDB_API_KEY"] == "wandb-s3cr3t"
    assert "wandb-s3cr3t" not in repr(spec) and "wandb-s3cr3t" not in str(spec)


def test_env_name_alone_takes_the_value_from_the_shell(monkeypatch, capsys):
    spec = str(REPO / "jobs" / "train.yaml")
    monkeypatch.setenv("HF_TOKEN", "from-the-shell")
    assert jobs.load_job_spec(spec, env=["HF_TOKEN"]).runtime_env["env_vars"]["HF_TOKEN"] == (
        "from-the-shell")
    assert main(["submit", spec, "--env", "HF_TOKEN", "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert "from-the-shell" not in printed.out + printed.err

    monkeypatch.delenv("HF_TOKEN")
    assert main(["submit", spec, "--env", "HF_TOKEN", "--dry-run"]) == 2
    assert "--env HF_TOKEN: HF_TOKEN is not set in this shell" in capsys.readouterr().err
    assert main(["submit", spec, "--env", "=abc", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--env: expected NAME=VALUE or NAME" in err and "abc" not in err


def test_stages_after_a_search_train_with_its_best_trial(tmp_path, capsys):
    """tune.apply_best: every stage but `tune` takes best.yaml's train keys once it exists."""
    from ecmf.cli import build_parser, command_config

    sets = ["--set", f"workdir={tmp_path}", "--set", "tune.apply_best=true",
            "--set", "train.lr=0.001"]
    # no search yet
    assert command_config(build_parser().parse_args(["train", *sets])).train.lr == 0.001
    (tmp_path / "tune").mkdir()
    (tmp_path / "tune" / "best.yaml").write_text(
        f"workdir: {tmp_path}\ntrain: {{lr: 0.0025, hidden: 128}}\n")
    cfg = command_config(build_parser().parse_args(["train", *sets]))
    assert (cfg.train.lr, cfg.train.hidden) == (0.0025, 128)
    assert command_config(build_parser().parse_args(["tune", *sets])).train.lr == 0.001
    off = ["--set", f"workdir={tmp_path}", "--set", "train.lr=0.001"]  # apply_best: false
    assert command_config(build_parser().parse_args(["train", *off])).train.lr == 0.001

