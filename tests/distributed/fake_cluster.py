"""The cluster launcher YAMLs of ``cluster/`` rehearsed on this machine, twice: as a static
cluster (:class:`StaticCluster`: a head and one worker process per node type, started by hand)
and as an autoscaling one (:class:`FakeClusterHead`).

:func:`rehearsal_config` turns ``cluster/aws.yaml`` (or ``gcp.yaml``) into a config for Ray's
fake multi-node provider (``provider: type: fake_multinode``): its node types keep their
names, custom resources and labels, so the placement contract is the one the cloud config
declares, while each "node" is a raylet process on this machine. What changes, and why:

* no GPUs here: ``GPU`` is dropped; ``clipvg_model`` (which the cloud config advertises once per
  GPU) stays, so model work still needs a "gpu-like" node;
* CPUs scaled down to what two cores can host (``clipvg_data`` follows the CPU count, as in the
  cloud config), two ``clipvg_model`` per gpu-like node (two GPUs: two concurrent trials), at
  most one node per type;
* the head type is renamed ``ray.head.default``: the fake provider tags its head with that name;
* ``idle_timeout_minutes`` shortened, so a scale-down is seen within the test;
* no docker, file mounts or setup commands: the nodes run this checkout's virtualenv.

:class:`FakeClusterHead` starts the head with ``--autoscaling-config`` (Ray's monitor process
runs the autoscaler, which starts and stops the worker raylets itself).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml

from clipvg_tests_ray_head import RayHead  # first: puts Ray's bundled psutil on sys.path

import psutil  # noqa: E402

FAKE_HEAD_TYPE = "ray.head.default"
#: CPUs of each rehearsal node type (the cloud types have 32-64)
REHEARSAL_CPUS = {"gpu_worker": 2, "cpu_worker": 2}
#: ``clipvg_model`` of a rehearsal gpu-like node (the cloud's is its GPU count, 8)
REHEARSAL_MODEL_SLOTS = 2


def _load(launcher_yaml: str | Path) -> dict:
    return yaml.safe_load(Path(launcher_yaml).read_text())


def head_cpus(cloud: dict) -> int:
    """The CPUs the launcher config's head advertises (0 in cluster/: the head runs no work)."""
    return int(cloud["available_node_types"][cloud["head_node_type"]]["resources"].get("CPU", 0))


def rehearsal_node_types(cloud: dict) -> dict:
    """The launcher config's node types as rehearsal nodes (see the module doc): the head as
    ``ray.head.default``, each worker type with scaled-down resources, its labels, at most one node."""
    head_type = cloud["head_node_type"]
    types = {}
    for name, spec in cloud["available_node_types"].items():
        resources = {k: v for k, v in spec["resources"].items() if k != "GPU"}
        if name == head_type:
            types[FAKE_HEAD_TYPE] = {"resources": resources, "node_config": {}, "max_workers": 0}
            continue
        cpus = REHEARSAL_CPUS[name]
        resources["CPU"] = cpus
        if "clipvg_data" in resources:
            resources["clipvg_data"] = cpus
        if "clipvg_model" in resources:
            resources["clipvg_model"] = REHEARSAL_MODEL_SLOTS
        types[name] = {"resources": resources, "labels": dict(spec.get("labels", {})), "node_config": {},
                       "min_workers": spec.get("min_workers", 0), "max_workers": 1}
    return types


def rehearsal_config(launcher_yaml: str | Path, *, gcs_address: str, idle_timeout_minutes: float) -> dict:
    """The fake-multinode variant of a cluster launcher config (see the module doc)."""
    cloud = _load(launcher_yaml)
    types = rehearsal_node_types(cloud)
    return {
        "cluster_name": f"{cloud['cluster_name']}-rehearsal",
        "max_workers": len(types) - 1,
        "upscaling_speed": cloud.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                     # the fake nodes share one IP: tell them apart by node id; there is no SSH
                     # to update a node over, and no launch config to compare
                     "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "auth": {"ssh_user": "unused"},
        "head_node_type": FAKE_HEAD_TYPE,
        "available_node_types": types,
        **{k: copy.deepcopy(v) for k, v in _EMPTY_SECTIONS.items()},
    }


_EMPTY_SECTIONS = {"file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
                   "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [],
                   "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
                   "head_start_ray_commands": [], "worker_start_ray_commands": []}


class FakeClusterHead(RayHead):
    """A :class:`RayHead` that runs the autoscaler over the fake multi-node provider."""

    def __init__(self, temp_dir, launcher_yaml: str | Path, *, idle_timeout_minutes: float, env=None):
        super().__init__(temp_dir, num_cpus=head_cpus(_load(launcher_yaml)),
                         env={"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", **(env or {})})
        self.launcher_yaml = Path(launcher_yaml)
        self.idle_timeout_minutes = idle_timeout_minutes
        self.config_path = Path(temp_dir) / "rehearsal-cluster.yaml"

    def _start_once(self, deadline: float) -> None:
        # written per attempt: a retried start picks new ports, and the provider needs the GCS's
        self.config = rehearsal_config(self.launcher_yaml, gcs_address=self.address,
                                       idle_timeout_minutes=self.idle_timeout_minutes)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        super()._start_once(deadline)

    def command(self) -> list[str]:
        return [*super().command(), f"--autoscaling-config={self.config_path}"]

    def monitor_log(self) -> str:
        logs = sorted(self.temp_dir.glob("session_*/logs/monitor.log"))
        return logs[-1].read_text(errors="replace") if logs else ""


class StaticCluster(RayHead):
    """The launcher YAML's head (``ray start --head``) plus one worker node per worker type
    (``ray start --address=... --block``), each with the resources and labels of
    :func:`rehearsal_config`: a fixed cluster, no autoscaler. The worker processes are started
    and stopped here, by pid, like the head."""

    def __init__(self, temp_dir, launcher_yaml: str | Path):
        cloud = _load(launcher_yaml)
        super().__init__(temp_dir, num_cpus=head_cpus(cloud))
        self.node_types = {k: v for k, v in rehearsal_node_types(cloud).items() if k != FAKE_HEAD_TYPE}
        self.workers: dict[str, subprocess.Popen] = {}

    def worker_command(self, spec: dict) -> list[str]:
        from s3_server import free_port as port

        resources = dict(spec["resources"])
        cpus = resources.pop("CPU")
        labels = ",".join(f"{k}={v}" for k, v in spec.get("labels", {}).items())
        return [
            str(self.venv_bin() / "ray"), "start", f"--address={self.address}", "--block",
            "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
            f"--resources={json.dumps(resources)}", *([f"--labels={labels}"] if labels else []),
            f"--dashboard-agent-listen-port={port()}", f"--dashboard-agent-grpc-port={port()}",
            f"--runtime-env-agent-port={port()}", f"--metrics-export-port={port()}",
            f"--node-manager-port={port()}", f"--object-manager-port={port()}",
            f"--object-store-memory={self.object_store_memory}", f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats", "--log-style=record",
        ]

    def start(self, timeout: float = 120.0, attempts: int = 3) -> "StaticCluster":
        super().start(timeout, attempts)
        try:
            for name, spec in self.node_types.items():
                self._start_worker(name, spec, timeout, attempts)
        except BaseException:
            self.stop()
            raise
        self.refresh_pids()
        return self

    def _start_worker(self, name: str, spec: dict, timeout: float, attempts: int) -> None:
        """One worker node, retried: on a loaded 2-core machine ``ray start`` can give up
        waiting for its raylet to register (Ray's fixed 30 s, "timed out during startup")."""
        log_path = self.temp_dir / f"ray-start-{name}.log"
        for _ in range(attempts):
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    self.worker_command(spec), env=self.environment(), cwd=str(self.temp_dir),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.workers[name] = proc
            joined = wait_until(lambda: proc.poll() is not None or self._alive_nodes(spec["labels"]),
                                timeout=timeout)
            if joined and proc.poll() is None:
                return
            if proc.poll() is None:
                proc.kill()
            self.attempt_logs.append(log_path.read_text(errors="replace")[-4000:])
        raise RuntimeError(f"the {name} node did not join in {attempts} attempts:\n{self.attempt_logs[-1]}")

    def _alive_nodes(self, labels: dict) -> int:
        """Alive nodes that carry ``labels`` (a node type's)."""
        from ray.util.state import list_nodes

        try:
            nodes = list_nodes(address=self.dashboard_url, detail=True)
        except Exception:  # noqa: BLE001 - the dashboard may be busy
            return 0
        return sum(n.state == "ALIVE" and labels.items() <= n.labels.items() for n in nodes)

    def refresh_pids(self) -> list[int]:
        for proc in self.workers.values():
            try:
                self._procs.setdefault(proc.pid, psutil.Process(proc.pid))
            except psutil.NoSuchProcess:  # exited (and reaped) already
                pass
        return super().refresh_pids()

    def stop(self, timeout: float = 30.0) -> None:
        self.refresh_pids()
        for proc in self.workers.values():  # SIGTERM: `ray start --block` stops its raylet
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        super().stop(timeout)


_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"


def autoscaler_events(monitor_log: str) -> list[tuple[float, str]]:
    """``(unix time, summary)`` of the autoscaler's event lines ("Adding 1 node(s) of type
    gpu_worker.", "Removing 1 nodes of type gpu_worker (idle).") in its monitor.log."""
    out = []
    for m in re.finditer(_STAMP + r".*:event_summary:(.*)", monitor_log):
        out.append((_unix(m.group(1)), m.group(2).strip()))
    return out


def _unix(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class DemandWatch(threading.Thread):
    """Polls the cluster status (GCS) every ``every`` s and records, as unix times, when a
    pending task, actor or placement group first asked for ``resource`` (``demand``), and every
    time a node advertising it joined (``joins``) or left (``leaves``): with a short idle
    timeout the node may go and come back between two stages of a job."""

    def __init__(self, gcs_address: str, resource: str, every: float = 0.25):
        super().__init__(daemon=True)
        self.gcs_address, self.resource, self.every = gcs_address, resource, every
        self.demand: float | None = None
        self.joins: list[float] = []
        self.leaves: list[float] = []
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        from ray.autoscaler.v2.sdk import get_cluster_status

        present = False
        while not self._halt.is_set():
            try:
                status = get_cluster_status(self.gcs_address)
            except Exception as e:  # noqa: BLE001 - a missed poll is recorded, not fatal
                self.errors.append(repr(e))
                time.sleep(self.every)
                continue
            now = time.time()
            if self.demand is None and self._asked(status):
                self.demand = now
            now_present = any(u.resource_name == self.resource and u.total > 0
                              for n in [*status.active_nodes, *status.idle_nodes] for u in n.resource_usage.usage)
            if now_present != present:
                (self.joins if now_present else self.leaves).append(now)
                present = now_present
            time.sleep(self.every)

    def _asked(self, status) -> bool:
        d = status.resource_demands
        groups = [*d.ray_task_actor_demand, *d.placement_group_demand]
        return any(self.resource in b.bundle for g in groups for b in g.bundles_by_count)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def wait_until(predicate, timeout: float, every: float = 0.5):
    """``predicate()``'s first truthy value, polled; None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return None


def dump(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
