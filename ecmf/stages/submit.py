"""`ecmf submit`: job specs (`jobs/*.yaml`, format in jobs/README.md) resolved into a Ray job
(entrypoint, runtime env, driver resources) and submitted through `ecmf.runtime.jobs`."""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ecmf.config import ConfigError
from ecmf.runtime import jobs
from ecmf.runtime.jobs import JobError
from ecmf.stages import HELP as COMMANDS
from ecmf.stages.common import load_config
from ecmf.tune.space import search_points

# Never uploaded with working_dir: environments, run outputs and caches (Ray also honours
# .gitignore files inside working_dir).
DEFAULT_EXCLUDES = [".git", ".venv", "demo-out", "runs", "*.egg-info", "__pycache__",
                    ".pytest_cache", ".hypothesis", ".ruff_cache"]
SPEC_KEYS = {"name", "description", "config", "steps", "set", "entrypoint", "runtime_env",
             "entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory",
             "submission_id", "metadata"}
# Commands that talk to a cluster cannot run inside a job; `config` only prints.
NOT_A_STEP = {"submit", "jobs", "config"}
# An env var with a word of its name ending in one of these (any case, plural too) carries a
# secret: HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, RAY_AUTH_TOKEN, OPENAI_APIKEY; not
# TOKENIZERS_PARALLELISM. Its value is sent to the cluster but never printed.
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
_SECRET_NAME = re.compile(rf"(?:^|[^A-Z0-9])[A-Z0-9]*(?:{'|'.join(SECRET_WORDS)})S?(?:[^A-Z0-9]|$)")
MASK = "***"
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


@dataclass
class JobSpec:
    """A job spec resolved for submission: the entrypoint, its runtime env and driver resources."""

    path: Path
    name: str
    entrypoint: str
    runtime_env: dict[str, Any] = field(repr=False)  # real secret values: show masked_runtime_env()
    entrypoint_num_cpus: float = 1.0
    entrypoint_num_gpus: float = 0.0
    entrypoint_memory: int = 0
    submission_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    secret_names: frozenset[str] = frozenset()  # given through --env: masked whatever their name
    steps: tuple[str, ...] = ()  # the `ecmf` commands the job runs, in order
    config: Any = field(default=None, repr=False)  # the steps' resolved Config, where it loaded

    def plan(self) -> list[str]:
        """What the job will do, for a person reading a dry run: its steps in order and, for
        a search, the points of its space."""
        lines = [f"steps: {' -> '.join(self.steps)}"] if self.steps else []
        if "tune" in self.steps and self.config is not None:
            points = search_points(self.config.tune, self.config.train)
            keys = sorted({k for p in points for k in p})
            distinct = len({json.dumps(p, sort_keys=True, default=str) for p in points})
            lines.append(f"tune: {len(points)} trials over {keys or 'no key'} "
                         f"({distinct} distinct points)")
        return lines

    def hidden_names(self) -> list[str]:
        """The env_vars whose values ecmf never prints: secret-looking names and every --env."""
        env = self.runtime_env.get("env_vars") or {}
        return sorted(k for k in env if k in self.secret_names or is_secret_name(k))

    def masked_runtime_env(self) -> dict[str, Any]:
        """The runtime env as ecmf prints it: every hidden env var's value is ***."""
        if "env_vars" not in self.runtime_env:
            return dict(self.runtime_env)
        return {**self.runtime_env,
                "env_vars": masked_env(self.runtime_env["env_vars"], self.secret_names)}

    def redact(self, text: str) -> str:
        """`text` (an error from the cluster, say) with every hidden env var's value as ***."""
        env = self.runtime_env.get("env_vars") or {}
        for value in sorted((env[k] for k in self.hidden_names()), key=len, reverse=True):
            if value:
                text = text.replace(value, MASK)
        return text


def is_secret_name(name: str) -> bool:
    """Whether an env var's name looks like a token, key, password or credential."""
    return bool(_SECRET_NAME.search(name.upper()))


def masked_env(env_vars: dict[str, str], secret_names=()) -> dict[str, str]:
    """`env_vars` with the value of each name in `secret_names` or looking secret shown as ***."""
    return {k: MASK if k in secret_names or is_secret_name(k) else v for k, v in env_vars.items()}


def parse_memory(value: Any, where: str) -> int:
    """Bytes from an int or a string such as "8GiB", "512Mi" or "4G"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", str(value).lower())
    if isinstance(value, bool) or not m:
        raise JobError(f"{where}: expected bytes or a size like 8GiB, got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def env_pairs(items) -> dict[str, str]:
    """`--env NAME=VALUE`, or `--env NAME` for NAME's value in this shell (off the command line)."""
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        name = name.strip()
        if not name:  # never quote the item: its value may be a secret
            raise JobError("--env: expected NAME=VALUE or NAME, got no NAME before the =")
        if not eq:
            if name not in os.environ:
                raise JobError(f"--env {name}: {name} is not set in this shell; export it first")
            value = os.environ[name]
        out[name] = value
    return out


def build_entrypoint(steps: list[str], config: str | None, sets: list[str]) -> str:
    """`ecmf <step> <config> [step args] [--set ...]` for every step, joined by `&&`.

    A step's own arguments are kept verbatim so they may use shell variables from env_vars.
    """

    parts = []
    for i, step in enumerate(steps):
        command, _, rest = str(step).strip().partition(" ")
        if command not in COMMANDS or command in NOT_A_STEP:
            known = sorted(set(COMMANDS) - NOT_A_STEP)
            close = difflib.get_close_matches(command, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise JobError(f"steps[{i}]: unknown ecmf command {command!r}; {hint}known: {known}")
        words = ["ecmf", command]
        if config:
            words.append(shlex.quote(config))
        if rest.strip():
            words.append(rest.strip())
        words += [f"--set {shlex.quote(s)}" for s in sets]
        parts.append(" ".join(words))
    return " && ".join(parts)


def load_job_spec(path: str | Path, sets: list[str] = (), env: list[str] = ()) -> JobSpec:
    """Read and check a job spec; `sets` add `--set` overrides to every step, `env` env vars."""

    path = Path(path)
    if not path.is_file():
        raise JobError(f"job spec {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise JobError(f"{path}: expected a mapping at the top, got {type(raw).__name__}")
    unknown = sorted(set(raw) - SPEC_KEYS)
    if unknown:
        raise JobError(f"{path}: unknown key(s) {unknown}; known: {sorted(SPEC_KEYS)}")
    if bool(raw.get("steps")) == bool(raw.get("entrypoint")):
        raise JobError(f"{path}: give exactly one of `steps` (ecmf commands) or `entrypoint`")
    for key in ("steps", "set"):
        if not isinstance(raw.get(key) or [], list):
            raise JobError(f"{path}: {key}: expected a list, got {raw[key]!r}")

    renv = dict(raw.get("runtime_env") or {})
    wd = str(renv.get("working_dir", ".."))
    local = "://" not in wd  # a remote working_dir (s3://, https://...zip) is not checked here
    if local:
        wd_path = (path.parent / wd).resolve()
        if not wd_path.is_dir():
            raise JobError(f"{path}: runtime_env.working_dir {wd} is not a directory ({wd_path})")
        wd = str(wd_path)
    renv["working_dir"] = wd
    renv["excludes"] = list(dict.fromkeys([*DEFAULT_EXCLUDES, *(renv.get("excludes") or [])]))
    env_vars = {str(k): v for k, v in (renv.get("env_vars") or {}).items()}
    bad = [k for k, v in env_vars.items() if v is None or isinstance(v, (dict, list))]
    if bad:
        raise JobError(f"{path}: runtime_env.env_vars {bad}: expected plain string values")
    cli_env = env_pairs(env)
    renv["env_vars"] = {k: str(v) for k, v in {**env_vars, **cli_env}.items()}

    all_sets = [*(raw.get("set") or []), *sets]
    config = raw.get("config")
    loaded = None
    if config and local:
        cfg_path = Path(wd) / config
        if not cfg_path.is_file():
            raise JobError(f"{path}: config {config} not found under working_dir {wd}")
        try:  # fail here, not minutes later on the cluster
            loaded = load_config(cfg_path, all_sets)
        except ConfigError as e:
            raise JobError(f"{path}: config {config}: {e}") from None
    if raw.get("steps"):
        try:
            entrypoint = build_entrypoint(list(raw["steps"]), config, all_sets)
        except JobError as e:
            raise JobError(f"{path}: {e}") from None
    else:
        entrypoint = str(raw["entrypoint"]).strip()

    def number(key: str, default: float) -> float:
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise JobError(f"{path}: {key}: expected a number >= 0, got {v!r}")
        return float(v)

    name = str(raw.get("name") or path.stem)
    meta = {str(k): str(v) for k, v in (raw.get("metadata") or {}).items()}
    return JobSpec(
        path=path, name=name, entrypoint=entrypoint, runtime_env=renv,
        entrypoint_num_cpus=number("entrypoint_num_cpus", 1.0),
        entrypoint_num_gpus=number("entrypoint_num_gpus", 0.0),
        entrypoint_memory=parse_memory(raw.get("entrypoint_memory", 0),
                                       f"{path}: entrypoint_memory"),
        submission_id=raw.get("submission_id"),
        metadata={"ecmf_job": name, "ecmf_spec": str(path), **meta},
        secret_names=frozenset(cli_env),
        steps=tuple(str(x).split()[0] for x in raw.get("steps") or []), config=loaded,
    )


def ray_job_submit_command(spec: JobSpec, address: str, submission_id: str) -> str:
    """The plain `ray job submit` line that submits the same job, hidden env values as ***."""
    words = ["ray", "job", "submit", "--address", address, "--submission-id", submission_id,
             "--runtime-env-json", json.dumps(spec.masked_runtime_env(), sort_keys=True),
             "--metadata-json", json.dumps(spec.metadata, sort_keys=True),
             "--entrypoint-num-cpus", f"{spec.entrypoint_num_cpus:g}"]
    if spec.entrypoint_num_gpus:
        words += ["--entrypoint-num-gpus", f"{spec.entrypoint_num_gpus:g}"]
    if spec.entrypoint_memory:
        words += ["--entrypoint-memory", str(spec.entrypoint_memory)]
    return " ".join([*map(shlex.quote, words), "--", shlex.quote(spec.entrypoint)])




def run(job: str, sets: list[str] = (), env: list[str] = (), address: str | None = None,
        submission_id: str | None = None, dry_run: bool = False, follow: bool = False,
        timeout: float | None = None) -> None:
    """Submit the job spec `job` (its equivalent `ray job submit` line first); with `dry_run`,
    print its steps instead; with `follow`, stream its logs until it ends."""
    spec = load_job_spec(job, sets, env)
    address = jobs.resolve_address(address)
    sid = submission_id or spec.submission_id or jobs.new_submission_id(spec.name)
    print(f"equivalent: {ray_job_submit_command(spec, address, sid)}")
    if spec.hidden_names():
        print(f"ecmf submit: {', '.join(spec.hidden_names())} shown as {MASK}; the job gets "
              "the real values", file=sys.stderr)
    if dry_run:
        print("\n".join(spec.plan()))
        return
    client = jobs.connect(address)
    sid = jobs.submit(client, spec, sid)
    print(f"submitted {sid} to {address}\nlogs: ecmf jobs logs {sid} --follow --address {address}")
    if follow:
        print(f"job {sid} {jobs.follow(client, sid, timeout_s=timeout)}")
