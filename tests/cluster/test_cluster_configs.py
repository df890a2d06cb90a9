"""The deployment files under cluster/ and configs/cluster.yaml, checked offline.

Nothing here starts a cluster or calls a cloud: the launcher configs are validated with the
installed Ray's own schema and config preparation (`ray up` runs the same two steps before it
calls the provider), the KubeRay manifests are turned into node types by the installed Ray's
KubeRay autoscaler code, and the placement contract (docs/cluster.md) is checked between the
run config and the node types that advertise its custom resources.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import runpy
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config

import clipvg.cli
from clipvg.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
RUN_CONFIG = REPO / "configs" / "cluster.yaml"
LAUNCHER_CONFIGS = sorted(CLUSTER.glob("*.yaml"))
RAY_MINOR = ".".join(ray.__version__.split(".")[:2])  # "2.60"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _validate(raw: dict) -> dict:
    """What `ray up` does before it touches the provider: fill in the provider's defaults
    (a file in the Ray wheel), validate against ray-schema.json and the cross-field rules."""
    validate_config(copy.deepcopy(raw))  # the file as written, without Ray's defaults
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def _kuberay_node_types(cluster_spec: dict, name: str = "clipvg") -> dict:
    """The node types Ray's KubeRay autoscaler derives from a RayCluster spec."""
    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
          "metadata": {"name": name, "namespace": "default"}, "spec": copy.deepcopy(cluster_spec)}
    config = _derive_autoscaling_config_from_ray_cr(cr)
    validate_config(config)
    return config["available_node_types"]


def _custom(resources: dict) -> dict:
    return {k: v for k, v in resources.items() if k.startswith("clipvg_")}


@pytest.fixture(scope="module")
def run_config():
    return load_config(RUN_CONFIG, [])


@pytest.fixture(scope="module")
def kuberay_cluster() -> dict:
    return _load(KUBERAY / "raycluster.yaml")


@pytest.fixture(scope="module")
def kuberay_job() -> dict:
    return _load(KUBERAY / "rayjob.yaml")


# --------------------------------------------------------------------------- launcher configs


def test_both_launcher_configs_exist():
    assert {p.name for p in LAUNCHER_CONFIGS} == {"aws.yaml", "gcp.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_validates_against_installed_ray(path):
    prepared = _validate(_load(path))
    assert prepared["provider"]["type"] == path.stem


def _break_drop_resources(raw):
    del raw["available_node_types"]["gpu_worker"]["resources"]


def _break_misspell_top_level_key(raw):
    raw["idle_timeout_minute"] = raw.pop("idle_timeout_minutes")


def _break_fractional_resource(raw):
    raw["available_node_types"]["cpu_worker"]["resources"]["clipvg_data"] = 0.5


def _break_misspell_node_type_key(raw):
    raw["available_node_types"]["gpu_worker"]["min_worker"] = raw["available_node_types"]["gpu_worker"].pop("min_workers")


def _break_head_type(raw):
    raw["head_node_type"] = "ray.head.default"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("breaker, error", [
    (_break_drop_resources, jsonschema.ValidationError),
    (_break_misspell_top_level_key, jsonschema.ValidationError),
    (_break_fractional_resource, jsonschema.ValidationError),
    (_break_misspell_node_type_key, jsonschema.ValidationError),
    (_break_head_type, ValueError),
], ids=lambda v: getattr(v, "__name__", ""))
def test_broken_copy_fails_validation(path, breaker, error):
    raw = _load(path)
    breaker(raw)
    with pytest.raises(error):
        validate_config(raw)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_node_types(path):
    raw = _load(path)
    types = raw["available_node_types"]
    assert set(types) == {"head", "gpu_worker", "cpu_worker"}
    assert raw["head_node_type"] == "head"
    # the head runs no training and no data work
    assert types["head"]["resources"] == {"CPU": 0}
    gpu, cpu = types["gpu_worker"], types["cpu_worker"]
    # model work: GPUs and one clipvg_model per GPU
    assert gpu["resources"]["GPU"] >= 1
    assert gpu["resources"]["clipvg_model"] == gpu["resources"]["GPU"]
    assert "clipvg_data" not in gpu["resources"]
    assert gpu["labels"] == {"clipvg/role": "model"}
    assert gpu["docker"]["worker_image"].endswith("-gpu")
    # data work: no GPU, one clipvg_data per CPU
    assert not cpu["resources"].get("GPU")
    assert cpu["resources"]["clipvg_data"] == cpu["resources"]["CPU"] >= 1
    assert "clipvg_model" not in cpu["resources"]
    assert cpu["labels"] == {"clipvg/role": "data"}
    for worker in (gpu, cpu):
        assert worker["min_workers"] == 0  # nothing is paid for while nothing is pending
        assert 1 <= worker["max_workers"] <= raw["max_workers"]


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_autoscaling_knobs(path):
    raw = _load(path)
    assert raw["idle_timeout_minutes"] > 0
    assert raw["upscaling_speed"] > 0
    assert raw["max_workers"] >= 1


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_installs_this_checkout_on_the_pinned_ray(path):
    raw = _load(path)
    assert raw["file_mounts"]["~/clipvg"] == "."
    assert any(re.search(r"pip install .*-e ~/clipvg", c) for c in raw["setup_commands"])
    for excluded in ("/.venv", "/runs", "/.git"):
        assert excluded in raw["rsync_exclude"]
    pinned = re.search(r'"ray\[[^\]]*\]==(\d+\.\d+)\.\*"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pinned == RAY_MINOR
    images = [raw["docker"]["image"]] + [t["docker"]["worker_image"]
                                         for t in raw["available_node_types"].values() if "docker" in t]
    for image in images:
        assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_MINOR)}\.\d+-py311-(cpu|gpu)", image), image


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_token_auth_and_dashboard(path):
    raw = _load(path)
    options = " ".join(raw["docker"]["run_options"])
    assert "-e RAY_AUTH_MODE=token" in options
    token_path = re.search(r"-e RAY_AUTH_TOKEN_PATH=(\S+)", options).group(1)
    # the token file lives in a mounted directory that holds only the token
    mount = str(Path(token_path).parent)
    assert raw["file_mounts"][mount] == "~/.clipvg-ray-auth"
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in head_start and "--dashboard-port=8265" in head_start
    assert "RAY_AUTH_MODE=disabled" not in path.read_text()


# --------------------------------------------------------------------------- secrets

SECRET_PATTERNS = [
    re.compile(r"aws_secret_access_key", re.I),
    re.compile(r"aws_access_key_id\s*[:=]", re.I),
    re.compile(r"aws_session_token\s*[:=]", re.I),
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"private_key", re.I),
    re.compile(r"BEGIN [A-Z ]*PRIVATE KEY"),
    re.compile(r"\"type\"\s*:\s*\"service_account\""),
    re.compile(r"gcp_credentials"),
    re.compile(r"RAY_AUTH_TOKEN\s*[:=]"),          # a token value (RAY_AUTH_TOKEN_PATH is fine)
    re.compile(r"name:\s*RAY_AUTH_TOKEN\s*$", re.M),  # ... or one set as a container env value
]


def _secret_hits(text: str) -> list[str]:
    return [p.pattern for p in SECRET_PATTERNS if p.search(text)]


def test_secret_scan_flags_planted_secrets():
    assert _secret_hits("aws_secret_access_key = x")
    assert _secret_hits("key: AKIA" + "ABCDEFGHIJKLMNOP")
    assert _secret_hits('{"type": "service_account", "private_key": "..."}')
    assert _secret_hits("- -e RAY_AUTH_TOKEN=abc123")
    assert not _secret_hits("- -e RAY_AUTH_TOKEN_PATH=/opt/clipvg-auth/auth_token")


def test_no_secrets_in_deployment_files():
    files = [p for p in CLUSTER.rglob("*") if p.is_file()] + [RUN_CONFIG]
    assert len(files) >= 8
    hits = {str(p.relative_to(REPO)): _secret_hits(p.read_text()) for p in files}
    assert {k: v for k, v in hits.items() if v} == {}


# --------------------------------------------------------------------------- the placement contract


def test_run_config_is_a_gpu_cluster_run(run_config):
    c = run_config
    assert c.scaling.use_gpu and c.curriculum.scoring.gpus_per_actor == 1
    assert c.curriculum.launcher == "ray_train"
    assert c.storage.root.startswith("s3://") and c.data.uri.startswith("s3://")
    assert c.scaling.model_resources == {"clipvg_model": 1}
    assert c.scaling.data_resources == {"clipvg_data": 1}


def _all_node_types(kuberay_cluster) -> dict[str, dict]:
    """{platform/type: resources} of every worker type of every deployment file."""
    out = {}
    for path in LAUNCHER_CONFIGS:
        for name, t in _load(path)["available_node_types"].items():
            out[f"{path.name}/{name}"] = t["resources"]
    for name, t in _kuberay_node_types(kuberay_cluster["spec"]).items():
        out[f"raycluster.yaml/{name}"] = t["resources"]
    return out


def test_placement_contract_matches_the_advertised_resources(run_config, kuberay_cluster):
    s, scoring = run_config.scaling, run_config.curriculum.scoring
    types = _all_node_types(kuberay_cluster)
    model_types = {n: r for n, r in types.items() if "clipvg_model" in r}
    data_types = {n: r for n, r in types.items() if "clipvg_data" in r}
    assert len(model_types) == 3 and len(data_types) == 3  # one of each per platform
    for name, r in types.items():
        if name not in model_types and name not in data_types:
            assert r.get("CPU") == 0 and not r.get("GPU"), f"{name} would take work: {r}"
    # model work lands only where it fits: a Train worker and a scoring actor
    for name, r in model_types.items():
        assert r.get("GPU", 0) >= 1 and "clipvg_data" not in r, name
        for key, amount in s.model_resources.items():
            assert r.get(key, 0) >= amount, (name, key)
        assert r["CPU"] >= s.cpus_per_worker and r["GPU"] >= s.gpus_per_worker, name
        assert r["CPU"] >= scoring.cpus_per_actor and r["GPU"] >= scoring.gpus_per_actor, name
    # decode tasks land only on CPU nodes, and fit there
    for name, r in data_types.items():
        assert not r.get("GPU") and "clipvg_model" not in r, name
        for key, amount in s.data_resources.items():
            assert r.get(key, 0) >= amount, (name, key)
        assert r["CPU"] >= s.data_cpus, name


def test_one_training_fits_each_cluster(run_config, kuberay_cluster):
    """A trial's DDP group must fit the GPUs a cluster can grow to, or it waits forever."""
    s = run_config.scaling
    need = s.num_workers * s.gpus_per_worker
    for path in LAUNCHER_CONFIGS:
        gpu = _load(path)["available_node_types"]["gpu_worker"]
        assert gpu["max_workers"] * gpu["resources"]["GPU"] >= need, path.name
    group = next(g for g in kuberay_cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-worker")
    assert group["maxReplicas"] * int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= need


# --------------------------------------------------------------------------- KubeRay


def test_kuberay_manifests_parse():
    for name, kind, api in [("raycluster.yaml", "RayCluster", "ray.io/v1"), ("rayjob.yaml", "RayJob", "ray.io/v1"),
                            ("serviceaccount.yaml", "ServiceAccount", "v1")]:
        docs = [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]
        assert [(d["apiVersion"], d["kind"]) for d in docs] == [(api, kind)], name


def test_raycluster(kuberay_cluster):
    spec = kuberay_cluster["spec"]
    assert spec["rayVersion"].startswith(RAY_MINOR + ".")
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["autoscalerOptions"]["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu-worker", "cpu-worker"}
    for g in groups.values():
        assert g["minReplicas"] == 0 and g["replicas"] == 0 and g["maxReplicas"] >= 1
    gpu_limits = groups["gpu-worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in groups["cpu-worker"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    # what Ray's KubeRay autoscaler makes of the spec (rayStartParams.resources is parsed there)
    types = _kuberay_node_types(spec)
    assert types["headgroup"]["resources"]["CPU"] == 0
    g, c = types["gpu-worker"], types["cpu-worker"]
    assert g["resources"]["clipvg_model"] == g["resources"]["GPU"] == int(gpu_limits["nvidia.com/gpu"])
    assert c["resources"]["clipvg_data"] == c["resources"]["CPU"] and not c["resources"].get("GPU")
    assert g["min_workers"] == c["min_workers"] == 0
    assert g["labels"] == {"clipvg/role": "model"} and c["labels"] == {"clipvg/role": "data"}


def test_kuberay_resources_match_the_launcher_configs(kuberay_cluster):
    launcher = set()
    for path in LAUNCHER_CONFIGS:
        for t in _load(path)["available_node_types"].values():
            launcher |= set(_custom(t["resources"]))
    kube = set()
    for t in _kuberay_node_types(kuberay_cluster["spec"]).values():
        kube |= set(_custom(t["resources"]))
    assert launcher == kube == {"clipvg_model", "clipvg_data"}


def _pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_kuberay_pods_share_image_and_storage_identity(kuberay_cluster):
    account = _load(KUBERAY / "serviceaccount.yaml")["metadata"]["name"]
    pods = _pod_specs(kuberay_cluster["spec"])
    assert {p["serviceAccountName"] for p in pods} == {account}
    assert len({p["containers"][0]["image"] for p in pods}) == 1


def _pipeline_parser() -> argparse.ArgumentParser:
    """The argument parser of ray_jobs/pipeline.py (= `clipvg pipeline`)."""
    from clipvg.distributed.pipeline_cli import add_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser


def test_rayjob(kuberay_job, kuberay_cluster, run_config, monkeypatch):
    """The RayJob runs the cluster's image on raycluster.yaml's spec, and its entrypoint - run
    here as ``python <script> <args>`` would, with ``clipvg.cli.main`` stubbed - hands
    ``clipvg pipeline`` exactly its arguments and exits with its status. Planted defect that
    fails it: ray_jobs/pipeline.py calling ``main(["train", *sys.argv[1:]])`` (or dropping the
    arguments)."""
    spec = kuberay_job["spec"]
    assert spec["rayClusterSpec"] == kuberay_cluster["spec"]  # the same cluster as raycluster.yaml
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(runtime_env, dict) and "env_vars" not in runtime_env  # no secrets ride along
    # the image puts the repository where the job's working_dir expects it
    workdir = re.search(r"^WORKDIR (\S+)$", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert runtime_env["working_dir"] == workdir
    # the entrypoint runs a file of ray_jobs/ with arguments it accepts
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python"
    script = REPO / argv[1]
    assert script.is_file() and script.parent == REPO / "ray_jobs"
    calls = []
    monkeypatch.setattr(clipvg.cli, "main", lambda argv=None: calls.append(argv) or 7)
    monkeypatch.setattr("sys.argv", [str(script), *argv[2:]])
    monkeypatch.setenv("RAY_ADDRESS", "recorded")  # so that the script's setdefault is undone
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(script), run_name="__main__")
    assert calls == [["pipeline", *argv[2:]]] and exit_.value.code == 7
    assert os.environ["RAY_ADDRESS"] == "auto"  # joins the cluster the job runs on
    args, unknown = _pipeline_parser().parse_known_args(argv[2:])
    assert unknown == [], f"ray_jobs/pipeline.py does not accept {unknown}"
    assert (REPO / args.config).resolve() == RUN_CONFIG.resolve()  # configs/ links to clipvg/configs/
    assert load_config(REPO / args.config, args.overrides) == run_config


def test_dockerfile_base_matches_the_pinned_ray():
    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M).group(1)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_MINOR)}\.\d+-py311-gpu", base)
    assert re.search(r"pip install .*-e \.", text)
