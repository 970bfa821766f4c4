"""`ecmf jobs`: status, logs, stop or list of the jobs on a Ray cluster."""

from __future__ import annotations

from ecmf.errors import UserError
from ecmf.runtime import jobs


def run(action: str, job_id: str | None = None, address: str | None = None,
        follow: bool = False, timeout: float | None = None, tail: int = 0):
    """One action on one job (`list`: every job); returns what to print as JSON, or None."""
    if action != "list" and not job_id:
        raise UserError(f"ecmf jobs {action}: give the job's submission id")
    client = jobs.connect(address)
    if action == "list":
        return jobs.list_jobs(client)
    if action == "status":
        return jobs.job_status(client, job_id)
    if action == "stop":
        return jobs.stop(client, job_id)
    if follow:
        print(f"job {job_id} {jobs.follow(client, job_id, timeout_s=timeout)}")
    else:
        print(jobs.log_tail(client, job_id, tail))
    return None
