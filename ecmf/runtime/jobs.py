"""The Ray Jobs API from the driver's side: connect, submit, follow, status, logs and stop
(`ecmf submit` and `ecmf jobs`; job specs themselves are `ecmf.stages.submit`'s)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import sys
import time

from ecmf.errors import UserError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
TAIL_LINES = 40


class JobError(UserError, ValueError):
    """A job spec, cluster address or job that a user can fix or look at; the message says which."""


class JobFailed(JobError):
    """A job that ended FAILED or STOPPED: the command exits 1, not the usage-error 2."""


def new_submission_id(name: str) -> str:
    """`<name>-<UTC time>-<random>`: readable, sortable and unique on a cluster."""
    slug = re.sub(r"[^a-zA-Z0-9_-]+", "-", name).strip("-") or "ecmf"
    return f"{slug}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def resolve_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else the local dashboard."""
    return (address or os.environ.get("RAY_API_SERVER_ADDRESS")
            or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS)


def connect(address: str | None):
    """A JobSubmissionClient for `address`; the token comes from RAY_AUTH_TOKEN or ~/.ray."""
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    # The client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its argument; hide them so
    # an explicit --address wins, as the CLI says.
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
             if k in os.environ}
    try:
        return JobSubmissionClient(address)
    except ConnectionError as e:
        raise JobError(f"cannot reach the Ray Jobs API at {address}: {str(e).rstrip('.')}. "
                       "Is the dashboard port forwarded (see cluster/README.md)?") from None
    except Exception as e:  # AuthenticationError and friends: keep Ray's advice
        raise JobError(f"{address}: {type(e).__name__}: {e}") from None
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _about(job_id: str):
    """Turn the client's RuntimeErrors (unknown id, server errors) into JobErrors naming the job."""
    try:
        yield
    except RuntimeError as e:
        raise JobError(f"job {job_id}: {e}") from None


def submit(client, spec, submission_id: str | None = None) -> str:
    """Submit a job spec (`ecmf.stages.submit.JobSpec`); returns the submission id."""
    sid = submission_id or spec.submission_id or new_submission_id(spec.name)
    try:
        with _about(sid):
            return client.submit_job(
                entrypoint=spec.entrypoint, submission_id=sid, runtime_env=spec.runtime_env,
                metadata=spec.metadata, entrypoint_num_cpus=spec.entrypoint_num_cpus,
                entrypoint_num_gpus=spec.entrypoint_num_gpus,
                entrypoint_memory=spec.entrypoint_memory)
    except Exception as e:  # Ray may quote the runtime env back: never with its secret values
        message = spec.redact(str(e))
        if message == str(e):
            raise
        raise JobError(message) from None


def _iso(ms: int | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else None


def job_status(client, job_id: str) -> dict:
    """Status, message and times of a job as a plain dict."""
    with _about(job_id):
        info = client.get_job_info(job_id)
    return {"submission_id": info.submission_id or job_id, "status": str(info.status),
            "message": (info.message or "").split("\n", 1)[0], "entrypoint": info.entrypoint,
            "start_time": _iso(info.start_time), "end_time": _iso(info.end_time),
            "metadata": info.metadata or {}}


def list_jobs(client) -> list[dict]:
    """Every job the cluster knows, newest first."""
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
    return [{"submission_id": j.submission_id or j.job_id, "status": str(j.status),
             "entrypoint": j.entrypoint[:100]} for j in jobs]


def log_tail(client, job_id: str, lines: int = TAIL_LINES) -> str:
    with _about(job_id):
        text = client.get_job_logs(job_id)
    return "\n".join(text.rstrip("\n").splitlines()[-lines:]) if lines else text


def wait_terminal(client, job_id: str, timeout_s: float | None = None) -> str:
    """Poll until the job reaches SUCCEEDED, FAILED or STOPPED; returns that status."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    while True:
        status = job_status(client, job_id)["status"]
        if status in TERMINAL:
            return status
        if deadline and time.monotonic() > deadline:
            raise JobError(f"job {job_id} is still {status} after {timeout_s:.0f} s; it keeps "
                           f"running (stop it with `ecmf jobs stop {job_id}`)")
        time.sleep(1.0)


async def _stream(client, job_id: str, out) -> None:
    async for chunk in client.tail_job_logs(job_id):
        out.write(chunk)
        out.flush()


def follow(client, job_id: str, out=None, timeout_s: float | None = None) -> str:
    """Stream the job's logs to `out` until it ends; its terminal status, else JobError."""
    out = out or sys.stdout
    start = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(_stream(client, job_id, out), timeout_s))
    except TimeoutError:
        raise JobError(f"job {job_id} is still running after {timeout_s:.0f} s; it keeps "
                       f"running (stop it with `ecmf jobs stop {job_id}`)") from None
    except Exception as e:  # a proxy that drops websockets: fall back to polling the status
        print(f"\n[ecmf] log stream of {job_id} broke ({e}); polling its status", file=out)
    left = None if not timeout_s else max(1.0, timeout_s - (time.monotonic() - start))
    return check_finished(client, job_id, wait_terminal(client, job_id, left))


def check_finished(client, job_id: str, status: str) -> str:
    """Return SUCCEEDED; raise a JobError with the job's message and log tail otherwise."""
    if status == "SUCCEEDED":
        return status
    info = job_status(client, job_id)
    raise JobFailed(f"job {job_id} {status}: {info['message']}\n--- last {TAIL_LINES} log lines "
                   f"---\n{log_tail(client, job_id)}")


def stop(client, job_id: str, wait_s: float = 30.0) -> dict:
    """Ask the cluster to stop the job and wait (up to `wait_s`) until it has stopped."""
    with _about(job_id):
        client.stop_job(job_id)
    with contextlib.suppress(JobError):
        wait_terminal(client, job_id, wait_s)
    return job_status(client, job_id)
