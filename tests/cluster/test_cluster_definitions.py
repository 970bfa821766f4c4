"""cluster/ and docker/: the launcher YAML against Ray's schema, the KubeRay manifests against the
v1 CRD schemas, their security properties, shared storage and images, statically."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER = CLUSTER / "launcher" / "ecmf-aws.yaml"
KUBERAY = CLUSTER / "kuberay"
CRDS = REPO / ".." / "shared" / "data" / "kuberay-crds"
SHARED = "/mnt/shared"
SECRET = "ecmf-ray-auth"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _all_cluster_text() -> str:
    return "\n".join(p.read_text() for p in sorted(CLUSTER.rglob("*.yaml")))


# ------------------------------------------------------------------------- cluster launcher


def test_launcher_validates_against_ray_s_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = _load(LAUNCHER)
    jsonschema.validate(cfg, schema)
    bad = {**cfg, "docker": {**cfg["docker"], "imagee": "typo"}}
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject mistakes
        jsonschema.validate(bad, schema)


def test_launcher_passes_ray_up_s_own_checks():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(LAUNCHER)))


def test_launcher_cpu_head_autoscaling_gpu_workers_and_images():
    cfg = _load(LAUNCHER)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    assert gpu and all(t.get("min_workers", 0) < t["max_workers"] for t in gpu)
    assert cfg["docker"]["head_image"].split("/")[-1].startswith("ecmf-cpu:")
    assert cfg["docker"]["worker_image"].split("/")[-1].startswith("ecmf-gpu:")


def test_launcher_dashboard_on_loopback_and_token_auth_on():
    cfg = _load(LAUNCHER)
    text = LAUNCHER.read_text()
    assert "0.0.0.0" not in text
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    run_options = " ".join(cfg["docker"]["run_options"])
    assert "--env RAY_AUTH_MODE=token" in run_options
    for line in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]:
        if "ray start" in line:
            assert "RAY_AUTH_MODE=token" in line, line
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", run_options).group(1)
    assert token_path in cfg["file_mounts"]  # every node gets the token it is told to read


def test_launcher_mounts_shared_storage_into_every_container():
    cfg = _load(LAUNCHER)
    assert f"--volume {SHARED}:{SHARED}" in cfg["docker"]["run_options"]
    mounts = [c for c in cfg["initialization_commands"] if "mount -t nfs4" in c]
    assert mounts and mounts[0].rstrip().endswith(SHARED)


def test_no_cluster_definition_disables_auth():
    text = _all_cluster_text()
    assert not re.search(r"RAY_AUTH_MODE\W+disabled", text)
    assert not re.search(r"mode:\s*disabled", text)


# ------------------------------------------------------------------------- KubeRay


@functools.lru_cache
def _crd(name: str) -> dict:
    # The CRDs are ~1 MB of YAML each: parse once, with libyaml where it is there.
    return yaml.load((CRDS / name).read_text(), Loader=getattr(yaml, "CSafeLoader",
                                                                  yaml.SafeLoader))


def _crd_schema(name: str) -> dict:
    if not (CRDS / name).is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRDS.resolve()} (CI keeps them in "
                    "../shared/data/kuberay-crds/); this clone cannot validate the manifests")
    doc = _crd(name)
    return next(v for v in doc["spec"]["versions"] if v["name"] == "v1")["schema"][
        "openAPIV3Schema"]


def _unknown_fields(doc, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare: what `kubectl apply --validate=strict` refuses (the
    API server would silently drop them)."""
    if isinstance(doc, dict) and "properties" in schema:
        out = []
        for key, value in doc.items():
            sub = schema["properties"].get(key)
            if sub is None:
                if not schema.get("x-kubernetes-preserve-unknown-fields"):
                    out.append(f"{path}.{key}")
            else:
                out += _unknown_fields(value, sub, f"{path}.{key}")
        return out
    if isinstance(doc, list) and "items" in schema:
        return [u for i, v in enumerate(doc) for u in _unknown_fields(v, schema["items"],
                                                                      f"{path}[{i}]")]
    return []


def _check_against_crd(doc: dict, crd: str) -> None:
    import jsonschema

    schema = _crd_schema(crd)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]
    assert _unknown_fields(doc, schema) == []


@pytest.mark.parametrize("manifest,crd", [("raycluster.yaml", "ray.io_rayclusters.yaml"),
                                          ("rayjob.yaml", "ray.io_rayjobs.yaml")])
def test_kuberay_manifests_validate_against_the_v1_crds(manifest, crd):
    doc = _load(KUBERAY / manifest)
    assert doc["apiVersion"] == "ray.io/v1"
    _check_against_crd(doc, crd)


def test_crd_check_rejects_broken_manifests():
    doc = _load(KUBERAY / "raycluster.yaml")
    doc["spec"]["workerGroupSpecs"][0].pop("maxReplicas")
    with pytest.raises(AssertionError, match="maxReplicas"):
        _check_against_crd(doc, "ray.io_rayclusters.yaml")
    doc = _load(KUBERAY / "raycluster.yaml")
    doc["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    with pytest.raises(AssertionError, match="minReplica"):
        _check_against_crd(doc, "ray.io_rayclusters.yaml")
    doc = _load(KUBERAY / "rayjob.yaml")
    doc["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "Token"
    with pytest.raises(AssertionError, match="authOptions"):
        _check_against_crd(doc, "ray.io_rayjobs.yaml")
    doc = _load(KUBERAY / "rayjob.yaml")
    doc["spec"]["authOptions"] = doc["spec"]["rayClusterSpec"].pop("authOptions")
    with pytest.raises(AssertionError, match="authOptions"):  # RayJob's spec has none
        _check_against_crd(doc, "ray.io_rayjobs.yaml")


def _cluster_specs() -> list[tuple[str, dict]]:
    job = _load(KUBERAY / "rayjob.yaml")
    return [("raycluster.yaml", _load(KUBERAY / "raycluster.yaml")["spec"]),
            ("rayjob.yaml", job["spec"]["rayClusterSpec"])]


def _pod_specs(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]]


def _containers(manifest: str) -> list[tuple[str, dict]]:
    """Every container a manifest defines, init and submitter containers included."""
    doc = _load(KUBERAY / manifest)
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    pods = _pod_specs(spec)
    if doc["kind"] == "RayJob":
        pods.append(doc["spec"]["submitterPodTemplate"]["spec"])
    return [(f"{manifest}: {c['name']}", c) for pod in pods
            for c in pod["containers"] + pod.get("initContainers", [])]


def _auth_option_paths(schema: dict, path: tuple = ()) -> list[tuple[str, ...]]:
    """Where a CRD schema declares `authOptions`: the paths of the objects that hold it."""
    props = schema.get("properties", {})
    out = [path] if "authOptions" in props else []
    for key, sub in props.items():
        out += _auth_option_paths(sub, (*path, key))
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out += _auth_option_paths(schema[key], path)
    return out


@pytest.mark.parametrize("manifest,crd,where", [
    ("raycluster.yaml", "ray.io_rayclusters.yaml", [("spec",)]),
    ("rayjob.yaml", "ray.io_rayjobs.yaml", [("spec", "rayClusterSpec")])])
def test_kuberay_manifests_use_auth_options_wherever_the_crds_have_them(manifest, crd, where):
    schema = _crd_schema(crd)
    # A CRD that grows authOptions elsewhere (say, RayJob's own spec) fails here first.
    assert _auth_option_paths(schema["properties"]["spec"], ("spec",)) == where
    doc = _load(KUBERAY / manifest)
    for path in where:
        node, sub = doc, schema
        for key in path:
            node, sub = node[key], sub["properties"][key]
        opts, allowed = node.get("authOptions"), sub["properties"]["authOptions"]["properties"]
        assert opts, f"{manifest}: no {'.'.join(path)}.authOptions"
        assert set(opts) <= set(allowed), f"{manifest}: {sorted(set(opts) - set(allowed))}"
        assert opts["mode"] == "token" and "token" in allowed["mode"]["enum"]
        # A Secret of our own (data key auth_token), not one generated per cluster: its name
        # is what clients read the token from (cluster/README.md).
        assert opts["secretName"] == SECRET
        # Kubernetes-delegated auth needs RBAC we do not set up, and KubeRay does not support
        # it for RayJobs.
        assert not opts.get("enableK8sTokenAuth")


@pytest.mark.parametrize("manifest", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_token_is_not_wired_into_containers_by_hand(manifest):
    # authOptions sets RAY_AUTH_MODE and RAY_AUTH_TOKEN in the Ray containers, the autoscaler
    # and the RayJob submitter, and only where they are missing: a hand-set copy would win.
    containers = _containers(manifest)
    assert containers
    for name, c in containers:
        assert not [e["name"] for e in c.get("env", []) if e["name"].startswith("RAY_AUTH")], name
        assert not c.get("envFrom"), name
    doc = _load(KUBERAY / manifest)
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert "env" not in spec["autoscalerOptions"]
    assert "RAY_AUTH" not in json.dumps(doc)  # nor anywhere else in the data (comments aside)


def test_docs_read_the_token_from_the_secret_the_manifests_name():
    # The Jobs API client (ecmf submit, ray job) needs RAY_AUTH_MODE=token and the token: the
    # docs create and read the Secret that authOptions.secretName names, data key auth_token.
    names = {spec["authOptions"]["secretName"] for _, spec in _cluster_specs()}
    for path in (CLUSTER / "README.md", KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"):
        text = path.read_text()
        assert set(re.findall(r"kubectl (?:create|get) secret (?:generic )?(\S+)", text)) == names
        assert "--from-literal=auth_token=" in text, path.name
    for path in (CLUSTER / "README.md", KUBERAY / "raycluster.yaml"):
        text = path.read_text()
        assert "RAY_AUTH_MODE=token" in text and "{.data.auth_token}" in text, path.name


@pytest.mark.parametrize("name,spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str)
                         else "")
def test_kuberay_dashboard_stays_inside_the_cluster(name, spec):
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head.get("enableIngress") is False
    # 0.0.0.0 inside a pod binds the pod network only; anything else but loopback or the pod
    # IP would be a mistake.
    assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"
    assert "headService" not in head  # a custom Service could change the type
    for pod in _pod_specs(spec):
        assert not pod.get("hostNetwork")
        for c in pod["containers"]:
            assert all("hostPort" not in p for p in c.get("ports", []))
    labels = spec["headGroupSpec"]["template"]["metadata"]["labels"]
    policy = _load(KUBERAY / "networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy"
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    # The namespace's own pods; beyond them, only the KubeRay operator, on the dashboard port.
    same_namespace, operator = policy["spec"]["ingress"]
    assert same_namespace == {"from": [{"podSelector": {}}]}
    assert operator["ports"] == [{"protocol": "TCP", "port": 8265}]


def test_no_manifest_exposes_a_service_or_ingress():
    for path in sorted(CLUSTER.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc.get("kind") not in ("Ingress", "Service", "Route"), path.name
            # The data, not the comments that explain why neither is used.
            assert not re.search(r"NodePort|LoadBalancer", json.dumps(doc)), path.name


@pytest.mark.parametrize("name,spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str)
                         else "")
def test_kuberay_gpu_group_autoscales_on_the_shared_pvc(name, spec):
    assert spec["enableInTreeAutoscaling"] is True
    pvc = _load(KUBERAY / "storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    gpu = [g for g in spec["workerGroupSpecs"]
           if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and all(g["minReplicas"] < g["maxReplicas"] for g in gpu)
    assert all(g["template"]["spec"]["containers"][0]["image"].split("/")[-1]
               .startswith("ecmf-gpu:") for g in gpu)
    for pod in _pod_specs(spec):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in pod["volumes"] if "persistentVolumeClaim" in v}
        for c in pod["containers"]:
            mounted = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert claims[mounted[SHARED]] == pvc["metadata"]["name"], f"{name}: {c['name']}"


def test_rayjob_runs_the_full_pipeline_spec_from_the_image():
    job = _load(REPO / "jobs" / "mer2025-full.yaml")
    entry = _load(KUBERAY / "rayjob.yaml")["spec"]["entrypoint"]
    inner = re.fullmatch(r"bash -c '(.*)'", entry, re.DOTALL).group(1)
    config = f"/home/ray/ecmf/{job['config']}"
    assert [s.split() for s in inner.split("&&")] == [["ecmf", s, config] for s in job["steps"]]
    assert "$" not in inner  # the job's shell would expand variables before bash -c sees them


# ------------------------------------------------------------------------- images


def _from_default(dockerfile: Path) -> str:
    text = dockerfile.read_text()
    return re.search(r"^ARG BASE_IMAGE=(\S+)$", text, re.MULTILINE).group(1)


def test_images_build_on_official_ray_tags_of_the_installed_version():
    import ray

    gpu, cpu = _from_default(REPO / "docker" / "Dockerfile.gpu"), _from_default(
        REPO / "docker" / "Dockerfile.cpu")
    assert re.fullmatch(rf"rayproject/ray(-llm)?:{re.escape(ray.__version__)}-py311-cu12\d", gpu)
    assert cpu == f"rayproject/ray:{ray.__version__}-py311-cpu"


def test_gpu_image_installs_the_gpu_extra_and_stages_weights_offline():
    text = (REPO / "docker" / "Dockerfile.gpu").read_text()
    models = re.search(r'^ARG MODELS="([^"]*)"$', text, re.MULTILINE).group(1).split()
    cfg = _load(REPO / "jobs" / "configs" / "mer2025.yaml")
    wanted = {e["model"] for e in cfg["extract"]["encoders"].values()} | {cfg["enrich"]["model"]}
    assert {m for m in wanted if not m.startswith("packaged:")} <= set(models)
    assert text.index("hf download") < text.index("HF_HUB_OFFLINE=1")
    hf_home = re.search(r"HF_HOME=(\S+)", text).group(1)
    assert _load(REPO / "jobs" / "extract.yaml")["runtime_env"]["env_vars"]["HF_HOME"] == hf_home
    assert "--mount=type=secret,id=hf_token" in text and "ARG HF_TOKEN" not in text


def test_images_install_the_lock():
    """Both images install every package at the version requirements.lock names: the CPU one
    its CPU torch from the PyTorch CPU index, the GPU one the CUDA build of the same version."""
    lock = (REPO / "requirements.lock").read_text()
    assert re.search(r"^torch==[\d.]+\+cpu$", lock, re.MULTILINE)
    cpu = (REPO / "docker" / "Dockerfile.cpu").read_text()
    cpu_torch = ("--index-url https://download.pytorch.org/whl/cpu \\\n"
                 "        -c requirements.lock torch")
    assert cpu_torch in cpu
    assert "pip install --no-cache-dir -c requirements.lock ." in cpu
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert "s/^torch==\\([^+]*\\)+cpu$/torch==\\1/' requirements.lock > /tmp/constraints.txt" in gpu
    assert 'pip install --no-cache-dir -c /tmp/constraints.txt ".[gpu]"' in gpu
    for kind in ("cpu", "gpu"):
        assert "COPY --chown=ray:users pyproject.toml README.md requirements.lock ./" in \
            (REPO / "docker" / f"Dockerfile.{kind}").read_text()
        ignore = (REPO / "docker" / f"Dockerfile.{kind}.dockerignore").read_text()
        assert "!requirements.lock" in ignore


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_images_carry_the_job_configs_the_rayjob_names(kind):
    text = (REPO / "docker" / f"Dockerfile.{kind}").read_text()
    assert "WORKDIR /home/ray/ecmf" in text and "COPY --chown=ray:users jobs ./jobs" in text
    ignore = (REPO / "docker" / f"Dockerfile.{kind}.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:5] == ["!pyproject.toml", "!README.md",
                                                   "!requirements.lock", "!ecmf/", "!jobs/"]


# `make test` runs the venv's python without the venv on PATH: look beside it too.
HADOLINT = (shutil.which("hadolint")
            or shutil.which("hadolint", path=str(Path(sys.executable).parent)))


@pytest.mark.skipif(not HADOLINT, reason="hadolint is not installed (the `test` extra has it)")
@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_dockerfiles_pass_hadolint(kind):
    r = subprocess.run([HADOLINT, str(REPO / "docker" / f"Dockerfile.{kind}")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# -------------------------------------------------- what a GPU cluster's first run would hit


def test_gpu_image_states_the_cuda_and_driver_its_torch_needs():
    """torch 2.13.0 and vLLM 0.29.0 from PyPI are CUDA 13 builds: the image says so, asserts it
    at build time and names the driver it needs (its docs too)."""
    text = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert 'ai.ecmf.cuda="13.0"' in text and 'ai.ecmf.min-nvidia-driver="580"' in text
    assert "assert torch.version.cuda.startswith('13.')" in text
    assert "CUDA 12.8 (Python" not in text  # the old claim
    assert "driver >= 580" in (REPO / "docker" / "README.md").read_text()


def test_launcher_gpu_nodes_boot_a_current_driver_image():
    """Without an ImageId the launcher boots an old Deep Learning AMI (a CUDA 11-era driver)
    while the node still advertises its GPU."""
    types = _load(LAUNCHER)["available_node_types"]
    for name, spec in types.items():
        if spec["resources"].get("GPU"):
            image = spec["node_config"].get("ImageId", "")
            assert image.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/"
                                    "base-oss-nvidia-driver-gpu-"), (name, image)


def test_the_head_takes_no_work():
    """Decode tasks, Ray LLM's CPU stages and the weak classifiers never share the GCS's node."""
    cfg = _load(LAUNCHER)
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"]["CPU"] == 0
    assert any("--num-cpus=0" in line for line in cfg["head_start_ray_commands"])
    for name in ("raycluster.yaml", "rayjob.yaml"):
        doc = _load(KUBERAY / name)
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name


def test_network_policy_admits_the_kuberay_operator_to_the_dashboard():
    policy = _load(KUBERAY / "networkpolicy.yaml")
    rules = policy["spec"]["ingress"]
    assert {"podSelector": {}} in [r["from"][0] for r in rules]  # the namespace itself
    operator = [r for r in rules if any(
        src.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
        == "kuberay-operator" and "namespaceSelector" in src for src in r["from"])]
    assert operator and operator[0]["ports"] == [{"protocol": "TCP", "port": 8265}]


def test_gpu_extra_pins_exactly_what_the_image_installs():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert "retinaface-pytorch==0.0.7" in extras["gpu"]


def test_production_text_encoders_read_chinese_with_a_chinese_model():
    """Text is MER's strongest modality: the shipped config reads the subtitles in Chinese with
    MERTools' best text encoder, and the enrichment in the language its prompt writes."""
    from ecmf.stages.common import load_config

    cfg = load_config(REPO / "jobs" / "configs" / "mer2025.yaml")
    assert cfg.corpus.text_column == "chinese" and cfg.enrich.language == "zh"
    text = {name: enc for name, enc in cfg.extract.encoders.items() if enc.name == "text"}
    assert set(text) == {"text", "enriched"} and text["enriched"].input == "enriched_text"
    for name, enc in text.items():
        assert enc.model.startswith("hfl/chinese-roberta-wwm-ext"), (name, enc.model)
        assert enc.num_gpus > 0, name
    models = re.search(r'^ARG MODELS="([^"]*)"$', (REPO / "docker" / "Dockerfile.gpu").read_text(),
                       re.MULTILINE).group(1).split()
    assert {enc.model for enc in text.values()} <= set(models)
