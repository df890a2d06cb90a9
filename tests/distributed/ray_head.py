"""A real, separate Ray head for tests: ``ray start --head`` in a subprocess this process owns.

It is what a cluster operator runs, with every port it opens chosen free, so it can run next to
the session's in-process Ray (the ``ray_local`` fixture) or anyone else's Ray on the machine:

* ``--node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1``; GCS, dashboard, Ray Client server,
  dashboard agent (HTTP and gRPC), runtime-env agent, metrics export, node manager and object
  manager ports are all free ports picked here (Ray's fixed defaults -- 6379, 8265, 10001,
  52365 -- would collide with a second instance). The dashboard (the Jobs API) listens on
  127.0.0.1 only. Measured with Ray 2.60: ``ray start`` replaces a loopback
  ``--node-ip-address`` by the host's routable IP (``resolve_ip_for_localhost``), and the GCS,
  raylet and agents' gRPC servers listen on all interfaces -- token authentication is what
  guards them;
* a private ``--temp-dir`` (sessions, sockets, logs, ``ray_current_cluster``), never /tmp/ray;
* the virtualenv's ``bin`` first on PATH: a job's ``python`` entrypoint resolves with the PATH
  of the shell that started the head;
* ``RAY_ADDRESS`` = this head's GCS address, so its own processes never auto-detect another
  Ray instance of the machine;
* ``RAY_AUTH_MODE=token`` and the session's ``RAY_AUTH_TOKEN`` (tests/distributed/conftest.py)
  in its environment, so clients in this process authenticate with the same token and no
  ``~/.ray/auth_token`` is read or written; every other variable of this process is inherited,
  in particular the ``s3`` fixture's AWS_* variables -- the way a real node's environment
  (instance profile, node env) gives its Ray processes object-store credentials.

Which processes are "ours", and how they are stopped (never ``ray stop``, which ends every Ray
process on the machine, including the session's other Ray):

* the head runs as ``ray start --head --block`` in a :class:`subprocess.Popen` owned here, in a
  new session. With ``--block`` the ``ray start`` process does not daemonise: GCS, raylet,
  dashboard, agents, log monitor, autoscaler monitor and Ray Client server are its children
  (started with ``PR_SET_PDEATHSIG``, so they die with it), and the raylet's workers -- job
  supervisors, job drivers, Ray Train workers -- are their descendants;
* :attr:`RayHead.pids` is that tree (psutil, ``children(recursive=True)``) once the head is up,
  and it is refreshed before stopping, since workers come and go. Any process whose command
  line names this head's private temp dir (GCS, raylet and workers carry ``--session-dir`` /
  ``--temp-dir``) is added too, which catches a descendant that was re-parented to init after
  its parent exited. Processes are tracked as ``psutil.Process`` objects, which refuse to
  signal a pid that has been reused by an unrelated process;
* the ``ray start`` process gets ``PR_SET_PDEATHSIG=SIGTERM``: if the test process dies without
  stopping it, the head stops itself instead of outliving the session;
* :meth:`RayHead.stop` sends SIGTERM to the ``ray start --block`` process (its handler stops
  its children gracefully; the drain wait is disabled with
  ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0``), waits, then SIGTERM and finally SIGKILL to
  every recorded process that is still alive.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
import psutil
import pytest

from s3_server import free_port

#: variables a driver's ``ray.init`` leaves in this process that must not reach the head
_DRIVER_ONLY = ("RAY_CLIENT_MODE", "PYTHONBREAKPOINT", "RAY_JOB_ID")


class RayHeadError(RuntimeError):
    """The head did not come up (the message has the tail of its log)."""


class RayHead:
    """``ray start --head --block`` on 127.0.0.1 with free ports; see the module docstring."""

    def __init__(self, temp_dir: str | os.PathLike, *, num_cpus: int = 2,
                 object_store_memory: int = 512 * 1024**2, env: dict | None = None):
        self.temp_dir = Path(temp_dir)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.extra_env = dict(env or {})
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.log_path = self.temp_dir / "ray-start.log"
        self.process: subprocess.Popen | None = None
        self._procs: dict[int, psutil.Process] = {}
        self.start_s: float | None = None
        self.attempt_logs: list[str] = []  # logs of failed start attempts (retried)
        self.stop_s: float | None = None

    # -- addresses ----------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The GCS address (``ray.init(address=...)``, ``ray start --address=...``)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard / Jobs API address (``ray job submit --address ...``)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def pids(self) -> list[int]:
        """The processes of this head known so far (refreshed by :meth:`refresh_pids`)."""
        return sorted(self._procs)

    # -- environment and command ----------------------------------------------------------------

    @staticmethod
    def venv_bin() -> Path:
        return Path(sys.prefix) / "bin"

    def environment(self) -> dict:
        token = os.environ.get("RAY_AUTH_TOKEN")
        if not token:
            raise RayHeadError("RAY_AUTH_TOKEN is not set (tests/distributed/conftest.py sets it)")
        env = {k: v for k, v in os.environ.items() if k not in _DRIVER_ONLY}
        env.update(
            PATH=os.pathsep.join([str(self.venv_bin()), env.get("PATH", "")]),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=token,
            # Every process of this head (actors included, e.g. Ray Train's placement-group
            # cleaner, which calls the state API with no address) resolves "the cluster" to
            # this head, not by scanning the machine for gcs_server processes, which fails
            # with "Found multiple active Ray instances" next to another Ray. KubeRay sets
            # RAY_ADDRESS in a head pod the same way.
            RAY_ADDRESS=self.address,
            RAY_USAGE_STATS_ENABLED="0",
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM: stop now, no drain wait
            # On a loaded machine the agents can take longer than the raylet's default wait
            # for their port files (the raylet then aborts the start-up); give them time.
            RAY_agent_register_timeout_ms="120000",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        port = free_port
        return [
            str(self.venv_bin() / "ray"), "start", "--head", "--block",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--port={self.gcs_port}",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={port()}",
            f"--dashboard-agent-listen-port={port()}",
            f"--dashboard-agent-grpc-port={port()}",
            f"--runtime-env-agent-port={port()}",
            f"--metrics-export-port={port()}",
            f"--node-manager-port={port()}",
            f"--object-manager-port={port()}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--object-store-memory={self.object_store_memory}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
            "--log-style=record",
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0, attempts: int = 3) -> "RayHead":
        """Start the head and wait until its Jobs API answers; ``self.start_s`` is the time.

        A start that fails (on a loaded 2-core machine the raylet can give up waiting for its
        agents) is cleaned up by pid and retried on fresh ports, ``attempts`` times in all.
        """
        t0 = time.monotonic()
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(time.monotonic() + timeout)
                break
            except RayHeadError:
                self.stop()
                if attempt == attempts:
                    raise
                self.attempt_logs.append(self.log_tail())
                self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.refresh_pids()
        self.start_s = time.monotonic() - t0
        return self

    def _start_once(self, deadline: float) -> None:
        self._procs.clear()
        log = open(self.log_path, "wb")
        try:
            self.process = subprocess.Popen(
                self.command(), env=self.environment(), cwd=str(self.temp_dir),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C of pytest does not hit the head directly
                preexec_fn=_die_with_parent(),
            )
        finally:
            log.close()
        self._procs[self.process.pid] = psutil.Process(self.process.pid)
        try:
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline: float) -> None:
        """Until the dashboard answers an authenticated request (the Jobs API lives there)."""
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/jobs/",
            headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"},
        )
        while True:
            if self.process.poll() is not None:
                raise RayHeadError(f"ray start exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            if "Ray runtime started" in self.log_path.read_text(errors="replace"):
                try:
                    with urllib.request.urlopen(request, timeout=5) as response:
                        if response.status == 200:
                            return
                except OSError:
                    pass
            if time.monotonic() > deadline:
                raise RayHeadError(f"the head was not ready in time:\n{self.log_tail()}")
            time.sleep(0.25)

    def refresh_pids(self) -> list[int]:
        """Add the current descendants of ``ray start`` and stray processes of this temp dir."""
        if self.process is None:
            return []
        try:
            root = self._procs[self.process.pid]
            for child in root.children(recursive=True):
                self._procs.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
        temp = str(self.temp_dir)

        def names_temp_dir(arg: str) -> bool:  # .../rh1 must not match .../rh10
            return arg == temp or arg.endswith("=" + temp) or temp + os.sep in arg

        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if proc.pid != os.getpid() and any(names_temp_dir(arg) for arg in cmdline):
                self._procs.setdefault(proc.pid, proc)
        return self.pids

    def alive(self) -> list[int]:
        """Recorded processes still running (and still the same process, not a reused pid)."""
        return sorted(p.pid for p in self._procs.values() if _running(p))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop exactly the processes recorded for this head, by pid; idempotent."""
        if self.process is None:
            return
        t0 = time.monotonic()
        self.refresh_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        rest = [p for p in self._procs.values() if _running(p)]
        for p in rest:
            _signal(p, signal.SIGTERM)
        _, rest = psutil.wait_procs(rest, timeout=5)
        for p in rest:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(rest, timeout=5)
        self.stop_s = time.monotonic() - t0

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent():
    """preexec_fn: the head gets SIGTERM (a clean stop) if this process dies without stopping
    it (a killed pytest), so no head outlives its test session. Linux only; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    pr_set_pdeathsig = 1

    def preexec():
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)

    return preexec


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)  # psutil checks the pid was not reused
    except psutil.Error:
        pass


# ---- job helpers shared by the job tests ----

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# The tiny training job took 245 s (submit to SUCCEEDED) while other test sessions ran Ray on the
# same two cores (load average 7-10); the ~240 s first planned is too tight for that. Override
# with CLIPVG_JOB_TIMEOUT_S.
JOB_TIMEOUT_S = float(os.environ.get("CLIPVG_JOB_TIMEOUT_S", "480"))


def wait(client, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {timeout:.0f} s; log:\n"
                        f"{client.get_job_logs(job_id)[-6000:]}")
        time.sleep(0.5)
