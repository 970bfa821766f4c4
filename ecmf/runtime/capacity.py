"""What the connected Ray cluster can run: the shapes of the nodes it has and of those its
autoscaler can start, and whether a stage's requests fit them.

A cluster that scales from zero shows only its head at start, so nothing here counts what
happens to be up: it reads the autoscaler's node types (the cluster config it reports to the
GCS, else the config file of the monitor running beside this driver on the head) and, where
they cannot be read, lets Ray queue the work with a warning instead of refusing it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from ecmf.config import ConfigError

log = logging.getLogger(__name__)

AUTOSCALER_STATUS_KEY = "__autoscaling_status"  # in the GCS' KV while an autoscaler runs


@dataclass(frozen=True)
class Capacity:
    """Node shapes (resources of one node) and the most of each resource at once.

    `known` is False on an autoscaling cluster whose node types could not be read: `shapes`
    then holds only the nodes up now, and nothing is refused on their account.
    """

    shapes: tuple[dict[str, float], ...]
    totals: dict[str, float]
    source: str
    known: bool = True

    def fits(self, request: dict[str, float]) -> bool:
        """Whether one node shape offers all of `request` (one actor's or worker's bundle)."""
        want = {k: v for k, v in request.items() if v > 0}
        return any(all(shape.get(k, 0.0) >= v for k, v in want.items()) for shape in self.shapes)


def _sum(shapes) -> dict[str, float]:
    out: dict[str, float] = {}
    for shape in shapes:
        for k, v in shape.items():
            out[k] = out.get(k, 0.0) + v
    return out


def node_types_from_yaml(config: dict) -> list[tuple[dict[str, float], int]]:
    """(resources, max_workers) of each node type of a cluster launcher / autoscaler config."""
    types = config.get("available_node_types") or {}
    limit = config.get("max_workers")
    out = []
    for spec in types.values():
        most = spec.get("max_workers", limit if limit is not None else 0)
        if limit is not None:
            most = min(most, limit)
        out.append(({k: float(v) for k, v in (spec.get("resources") or {}).items()}, int(most)))
    return out


def _reported_node_types() -> list[tuple[dict[str, float], int]] | None:
    """The node groups an autoscaler (v2, KubeRay's) reported to the GCS, if any."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older GCS without the key: read it another way
        return None
    if not config or not config.node_group_configs:
        return None
    return [({k: float(v) for k, v in g.resources.items()},
             g.max_count if g.max_count >= 0 else math.inf) for g in config.node_group_configs]


def _monitor_node_types() -> list[tuple[dict[str, float], int]] | None:
    """The node types of this cluster's autoscaler monitor when it runs on this node (the
    head, where `ray job submit` runs a job's driver), from its `--autoscaling-config` file.
    Other Rays on the machine are told apart by their GCS port."""
    import psutil
    import ray
    import yaml

    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if not any(a.endswith("monitor.py") for a in args):
            continue
        opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if opts.get("gcs-address", "").rsplit(":", 1)[-1] != port:
            continue
        if not opts.get("autoscaling-config"):
            return None  # a monitor that only reports: the cluster does not scale
        try:
            return node_types_from_yaml(
                yaml.safe_load(Path(opts["autoscaling-config"]).read_text()) or {})
        except (OSError, yaml.YAMLError):
            return None
    return None


def _scaling_node_types() -> list[str]:
    """Names of the node types the running autoscaler can start (empty when it only reports
    the nodes up, as on a local Ray)."""
    import json

    from ray.experimental.internal_kv import _internal_kv_get

    try:
        status = json.loads(_internal_kv_get(AUTOSCALER_STATUS_KEY) or b"{}")
    except Exception:  # noqa: BLE001 - no KV access or no status: nothing scales
        return []
    report = status.get("autoscaler_report") or {}
    summary = report.get("node_availability_summary") or {}
    return sorted(summary.get("node_availabilities") or {})


def cluster_capacity() -> Capacity:
    """The connected cluster's capacity (see the module's docstring)."""
    import ray

    nodes = tuple({k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:")}
                  for n in ray.nodes() if n.get("Alive"))
    types = _reported_node_types() or _monitor_node_types()
    if types is None:
        scaling = _scaling_node_types()
        if not scaling:
            return Capacity(nodes, _sum(nodes), "the nodes up now (the cluster does not scale)")
        return Capacity(nodes, _sum(nodes), f"the nodes up now (an autoscaler can add node "
                        f"types {scaling} whose resources could not be read)", known=False)
    shapes = nodes + tuple(r for r, most in types if most > 0)
    extra = _sum([{k: v * most for k, v in r.items()} for r, most in types if most > 0])
    # An upper bound: running workers are counted again within their type's maximum.
    totals = _sum([_sum(nodes), extra])
    return Capacity(shapes, totals, "the nodes up now and the autoscaler's node types")


def check_placeable(requests: dict[str, dict[str, float]], capacity: Capacity) -> None:
    """Fail, naming the config key, for a request (key -> one bundle) that no node of the
    cluster, nor any node type its autoscaler can start, can ever hold; where the node types
    are unknown, warn instead and let Ray queue it."""

    for key, request in requests.items():
        if capacity.fits(request):
            continue
        want = ", ".join(f"{v:g} {k}" for k, v in request.items() if v > 0)
        have = "; ".join(", ".join(f"{v:g} {k}" for k, v in sorted(s.items())
                                   if k in ("CPU", "GPU") or k in request)
                         for s in capacity.shapes) or "none"
        if not capacity.known:
            log.warning("%s asks for %s per actor, which no node up now offers (%s); Ray will "
                        "wait for the autoscaler to start one", key, want, have)
            continue
        raise ConfigError(f"{key} asks for {want} per actor or worker, but no node can offer "
                          f"it (looked at {capacity.source}: {have}); lower the request (e.g. "
                          f"num_gpus: 0 on a machine without GPUs) or add a node type that has "
                          f"it")
