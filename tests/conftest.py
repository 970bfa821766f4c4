"""Shared fixtures: one local Ray per test session, offline hub, and a tiny demo workdir."""

from __future__ import annotations

import os

import pytest

# Set before anything imports transformers or starts Ray: an accidental hub download fails fast,
# a stalled Ray Data stage fails in five minutes (not Ray's thirty), and the throwaway test
# cluster needs no token. One minute proved too short on a loaded CI machine: the demo's
# enrichment actor pool, which passes here in ~10 s, once took over 60 s to start there; and
# `make test`'s two workers now share the CPUs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown where it is not installed
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers. A module's tests go to one worker, so its
    module fixtures (a trained workdir, a demo job) are built once; the tests under
    tests/cluster, which start Ray heads of their own, run one after another on one worker, as
    in a plain run, beside the other worker's modules. (xdist's own `--dist loadgroup` does not
    group under pytest 9, whose node ids it can no longer suffix.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndCluster(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tests/cluster" if module.startswith("tests/cluster/") else module

    return ModulesAndCluster(config, log)


# Test tiers: a test that starts Ray, in its process or in a command it runs, is marked `ray`
# (`cluster` and `autoscale`: it starts heads of its own); `make test-fast` runs the others.
RAY_MARKS = ("ray", "cluster", "autoscale")
RAY_FIXTURES = ("ray_local", "ray_head", "fake_gpu_cluster")


def pytest_collection_modifyitems(config, items):
    """A test that asks for a Ray fixture must carry a Ray mark, so the tiers stay true."""
    unmarked = [item.nodeid for item in items
                if set(RAY_FIXTURES) & set(getattr(item, "fixturenames", ()))
                and not any(item.get_closest_marker(m) for m in RAY_MARKS)]
    if unmarked:
        raise pytest.UsageError("tests using a Ray fixture without a `ray` mark:\n  "
                                + "\n  ".join(unmarked))


@pytest.fixture(scope="session", autouse=True)
def refuse_ray_in_the_fast_tier():
    """Under `make test-fast` (ECMF_TEST_NO_RAY=1), starting Ray in the test process fails the
    test, naming the mark it lacks."""
    if os.environ.get("ECMF_TEST_NO_RAY") != "1":
        yield
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("this test starts Ray: mark it `@pytest.mark.ray` (make test-fast "
                           "runs only tests that start none)")

    real, ray.init = ray.init, refuse
    yield
    ray.init = real


@pytest.fixture(scope="module")
def one_thread():
    """torch on one intra-op thread for the rest of a module: tiny models are bound by thread
    hand-offs, and on a busy 2-core machine a second thread makes them many times slower (Ray
    actors already get OMP_NUM_THREADS from their num_cpus)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole run (a cold start costs seconds and ~1 GB)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 * 1024**2,
                 log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small demo corpus in MER2025's layout (real mp4 with audio, wav, CSVs)."""
    from ecmf.config import DemoConfig
    from ecmf.data.demo import write_demo_corpus

    root = tmp_path_factory.mktemp("corpus")
    write_demo_corpus(DemoConfig(n_train=12, n_pool=6, n_candidates=6, n_test=4, seconds=1.0,
                                 workers=2), root)
    return root


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if a command starts Ray: for what must fail before it."""
    import contextlib

    import ecmf.runtime.session

    @contextlib.contextmanager
    def refuse(cfg):
        raise AssertionError("Ray was started")
        yield

    monkeypatch.setattr(ecmf.runtime.session, "ray_session", refuse)
