"""``model.pretrained`` on a machine without network: one line, exit 2, in seconds, before any
work (``clipvg train-local``, ``train``, ``pipeline``), naming the tag, the arch, the cache looked
in and ``model.weights=PATH``; cached weights pass; missing ones are fetched once when the hub
answers (clipvg.model.hub).

Nothing here contacts an address outside 127.0.0.1: the hub endpoint is a loopback trap that
counts connections, or a closed loopback port, or a loopback server; the caches are in tmp.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from huggingface_hub import constants as hf_constants
from storage_trap import Trap
from tiny_train import TINY_TRAIN

from clipvg.config import ModelConfig
from clipvg.model import hub
from clipvg.model.hub import HubWeightsError, ensure_pretrained

REPO = Path(__file__).resolve().parents[2]
# open_clip 3.3's source of ViT-B-16/openai: this hub repo, in the Hugging Face cache layout
REPO_FOLDER = "models--timm--vit_base_patch16_clip_224.openai"
OPENAI = ModelConfig(arch="ViT-B-16", pretrained="openai")
LIMIT_S = 10.0  # issue 24: the answer comes within 10 s (on a quiet machine)
SLOWER_THAN_VERSION = 6  # under load: at most this many times `clipvg --version`, measured then


def answered_at_once(elapsed: float, tmp_path: Path, endpoint: str) -> None:
    """Within 10 s, or - when the shared 2-core machine is loaded (make test runs pipelines
    beside this) - within a few times what a bare `clipvg --version` takes right now. Either
    way far from the minute of retries it replaces; that the check runs before torch and
    open_clip are imported is asserted on its own (test_the_check_imports_neither_...)."""
    if elapsed < LIMIT_S:
        return
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipvg.cli", "--version"], capture_output=True, check=True,
                   cwd=tmp_path, env=command_env(tmp_path, endpoint, True), timeout=120)
    baseline = time.perf_counter() - start
    assert elapsed < SLOWER_THAN_VERSION * baseline, f"answered after {elapsed:.1f} s (--version: {baseline:.1f} s)"


@pytest.fixture
def closed_port_url():
    """A loopback URL where nothing listens: a connection is refused at once. The port stays
    bound (not listening) for the whole test, so no other process can take it and answer
    (a port bound, released and then used could be taken in between)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def put_in_cache(cache: Path, filename: str) -> Path:
    """A fake cached file of ViT-B-16/openai where huggingface_hub keeps a downloaded one."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / REPO_FOLDER
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    path = folder / "snapshots" / commit / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really weights")
    return path


@pytest.fixture
def hub_env(tmp_path, monkeypatch, closed_port_url):
    """An empty hub cache in tmp, offline unless a test says otherwise, the endpoint a closed
    loopback port; huggingface_hub's constants (read at its import) patched the same way."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "ENDPOINT", closed_port_url)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# ------------------------------------------------------------------ the commands, end to end
def command_env(tmp_path: Path, endpoint: str, offline: bool) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "RAY_ADDRESS", "CLIPVG_DEBUG")) and k != "TRANSFORMERS_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"), HF_ENDPOINT=endpoint,
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def run_command(tmp_path: Path, command: str, endpoint: str, offline: bool = True):
    root = tmp_path / "runs"
    overrides = [o for o in TINY_TRAIN if not o.startswith("model.arch=")]
    argv = [sys.executable, "-m", "clipvg.cli", command, *overrides, "model.arch=ViT-B-16",
            "model.pretrained=openai", f"storage.root={root}"]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env=command_env(tmp_path, endpoint, offline))
    return proc, time.perf_counter() - start, root


@pytest.mark.parametrize("command", ["train-local", "train", "pipeline"])
def test_uncached_weights_offline_are_one_line_at_once(command, tmp_path):
    trap = Trap()  # the hub endpoint: any connection to it is counted
    try:
        proc, elapsed, root = run_command(tmp_path, command, trap.url)
    finally:
        trap.close()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(f"clipvg {command}: model.pretrained=openai (model.arch=ViT-B-16)"), line
    assert str(tmp_path / "hf" / "hub" / REPO_FOLDER) in line  # where it looked
    assert "HF_HUB_OFFLINE=1" in line and "model.weights=PATH" in line
    answered_at_once(elapsed, tmp_path, trap.url)
    assert not root.exists()  # before any work
    assert trap.connections == 0  # offline: the hub was not asked


def test_unreachable_hub_is_one_line_after_one_attempt(tmp_path, closed_port_url):
    """Not offline by configuration, but the hub does not answer (here: a closed port)."""
    endpoint = closed_port_url
    proc, elapsed, root = run_command(tmp_path, "train-local", endpoint, offline=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{endpoint} cannot be reached" in lines[0] and "model.weights=PATH" in lines[0]
    answered_at_once(elapsed, tmp_path, endpoint)
    assert not root.exists()


def test_the_check_imports_neither_torch_nor_open_clip():
    """open_clip's tag registry is read without its package (torch, torchvision: 15-25 s)."""
    code = ("import sys\nfrom clipvg.config import ModelConfig\nfrom clipvg.model import hub\n"
            "s = hub.pretrained_source(ModelConfig(arch='ViT-B-16', pretrained='openai'))\n"
            "print(s.repo_id, s.filenames)\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.splitlines()
    assert out == ["timm/vit_base_patch16_clip_224.openai "
                   "('open_clip_model.safetensors', 'open_clip_pytorch_model.bin')", "[]"]


# ------------------------------------------------------------------ the check, in this process
def test_cached_weights_pass(hub_env):
    path = put_in_cache(hub_env, "open_clip_model.safetensors")
    assert ensure_pretrained(OPENAI) == str(path)


def test_a_process_checks_once(hub_env, monkeypatch):
    """train-local's command line checks, then its loop (and a search trial every training):
    the hub is asked once per process (planted defect: no memo, a probe per call)."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    probes = []
    monkeypatch.setattr(hub, "unreachable", lambda url: probes.append(url))  # None: it answers
    path = put_in_cache(hub_env, "open_clip_model.safetensors")
    assert ensure_pretrained(OPENAI) == ensure_pretrained(OPENAI) == str(path)
    assert len(probes) == 1


def test_cached_pickle_passes_too(hub_env):
    """open_clip falls back to the .bin when the .safetensors is not there."""
    path = put_in_cache(hub_env, "open_clip_pytorch_model.bin")
    assert ensure_pretrained(OPENAI) == str(path)


def test_cached_weights_with_the_hub_unreachable_switch_loading_offline(hub_env, monkeypatch):
    """Cached, not offline by configuration, hub unreachable: this process and the workers it
    starts load from the cache without asking the hub (no retries per trial)."""
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    path = put_in_cache(hub_env, "open_clip_model.safetensors")
    assert ensure_pretrained(OPENAI) == str(path)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hf_constants.HF_HUB_OFFLINE is True


def test_uncached_weights_offline_name_tag_cache_and_way_out(hub_env):
    with pytest.raises(HubWeightsError) as err:
        ensure_pretrained(OPENAI)
    message = str(err.value)
    assert "\n" not in message
    assert "model.pretrained=openai (model.arch=ViT-B-16)" in message
    assert str(hub_env / REPO_FOLDER) in message
    assert "open_clip_model.safetensors or open_clip_pytorch_model.bin" in message
    assert "model.weights=PATH model.pretrained=null" in message


def test_unknown_tag_names_the_known_ones(hub_env):
    with pytest.raises(HubWeightsError, match=r"model.pretrained=nope is not an open_clip pretrained tag "
                                              r"of model.arch=ViT-B-16 \(its tags: openai"):
        ensure_pretrained(ModelConfig(arch="ViT-B-16", pretrained="nope"))


def test_a_file_as_the_tag_passes(hub_env, tmp_path):
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"x")
    assert ensure_pretrained(ModelConfig(arch="ViT-B-16", pretrained=str(weights))) == str(weights)


def test_without_pretrained_nothing_is_checked(hub_env):
    assert ensure_pretrained(ModelConfig(arch={"embed_dim": 8}, pretrained=None)) is None


class _Answers(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def reachable_hub(hub_env, monkeypatch):
    """A loopback server that answers the probe; not offline."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(hf_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    yield hub_env
    server.shutdown()
    server.server_close()


def test_uncached_weights_with_the_hub_reachable_are_fetched_once(reachable_hub, monkeypatch, capsys):
    """open_clip's own downloader (faked here) runs once, on this machine; then it is cached."""
    calls = []

    def download_pretrained(cfg):
        calls.append(cfg)
        return str(put_in_cache(reachable_hub, "open_clip_model.safetensors"))

    fake = types.ModuleType("open_clip.pretrained")
    fake.download_pretrained = download_pretrained
    monkeypatch.setitem(sys.modules, "open_clip.pretrained", fake)
    first = ensure_pretrained(OPENAI)
    assert ensure_pretrained(OPENAI) == first == str(reachable_hub / REPO_FOLDER / "snapshots" /
                                                     "0123456789abcdef0123456789abcdef01234567" /
                                                     "open_clip_model.safetensors")
    assert [c["hf_hub"] for c in calls] == ["timm/vit_base_patch16_clip_224.openai/"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("clipvg: downloading the weights of model.pretrained=openai")


def test_a_remote_cluster_fetches_its_own(reachable_hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip.pretrained", None)  # a download would fail
    assert ensure_pretrained(OPENAI, fetch=False) is None


def test_the_probe_is_bounded_when_nothing_answers():
    """A server that accepts but never answers: the probe gives up after its timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        start = time.perf_counter()
        reason = hub.unreachable(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=0.5)
        assert reason is not None and time.perf_counter() - start < 3
