"""The hub weights of ``model.pretrained``: found in the local cache, fetched once, or refused at once.

``open_clip.create_model(arch, pretrained=tag)`` downloads a tag's weights when they are not
cached; without network it retries for a minute or more and then fails with a long log, in every
process that builds a model (each Ray Tune trial, each Ray Train worker). :func:`ensure_pretrained`
answers first, in about a second and before any work:

* cached (where open_clip itself looks: the Hugging Face hub cache for a tag with an ``hf_hub``
  entry, ``~/.cache/clip`` for a tag with only a ``url``): go on. If the hub cannot be reached,
  this process and the Ray workers it starts later are switched to ``HF_HUB_OFFLINE=1`` so that
  loading reads the cache without asking the hub again;
* not cached, and offline (``HF_HUB_OFFLINE=1``, or one quick request to the server fails): a
  :class:`HubWeightsError`, one line naming the tag, the arch, the cache looked in and
  ``model.weights=PATH`` (a local CLIP weights file) as the way out;
* not cached but reachable: downloaded once here with open_clip's own downloader (a line says
  so), so that every trial and worker on this machine finds it in the cache.

open_clip's registry of tags is read from its ``pretrained.py`` without importing the package
(``import open_clip`` loads torch and torchvision: 15-25 s here).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import threading
import types
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.file_download import repo_folder_name

from clipvg.config import Config, ModelConfig, load_config
from clipvg.errors import UserError

# Where open_clip's ``download_pretrained_from_url`` keeps ``url`` weights (its default).
CLIP_URL_CACHE = "~/.cache/clip"
PROBE_TIMEOUT_S = 3.0
# Private name under which open_clip's pretrained.py is loaded (never ``open_clip`` itself).
_REGISTRY_PACKAGE = "_clipvg_open_clip_registry"


class HubWeightsError(UserError):
    """``model.pretrained`` names weights that are neither cached nor downloadable from here."""


@dataclass(frozen=True)
class PretrainedSource:
    """Where open_clip gets the weights of one (arch, tag): a hub repo, a URL or a file."""

    arch: str
    tag: str
    cfg: dict  # open_clip's pretrained cfg of the tag (what its download_pretrained takes)
    repo_id: str | None = None  # Hugging Face hub repo ...
    filenames: tuple[str, ...] = ()  # ... and its candidate files, in open_clip's order
    url: str | None = None  # a plain URL (tags without an hf_hub entry)
    file: str | None = None  # a local file (a path given as the tag)

    @property
    def server(self) -> str:
        """The server a download would ask."""
        if self.repo_id is not None:
            return hf_constants.ENDPOINT
        parts = urlsplit(self.url or "")
        return f"{parts.scheme}://{parts.netloc}"

    def locations(self) -> str:
        """Where the cached weights are looked for, in words."""
        if self.repo_id is not None:
            folder = Path(hf_constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.repo_id, repo_type="model")
            return f"{' or '.join(self.filenames)} under {folder}"
        return str(self.url_target())

    def url_target(self) -> Path:
        return Path(CLIP_URL_CACHE).expanduser() / os.path.basename(self.url or "")


@functools.lru_cache(maxsize=1)
def open_clip_registry() -> types.ModuleType:
    """open_clip's ``pretrained`` module, loaded from its file under a private package name so
    that open_clip's ``__init__`` (torch, torchvision) is not run; ``safetensors.torch`` (torch
    again) is kept out while it loads; the tag registry and helpers do not need it."""
    spec = importlib.util.find_spec("open_clip")  # finds, does not import
    if spec is None or not spec.submodule_search_locations:
        raise HubWeightsError("model.pretrained needs open_clip (pip install open_clip_torch)")
    package = types.ModuleType(_REGISTRY_PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault(_REGISTRY_PACKAGE, package)
    block = "safetensors.torch" not in sys.modules
    if block:
        sys.modules["safetensors.torch"] = None  # `import safetensors.torch` -> ImportError
    try:
        return importlib.import_module(f"{_REGISTRY_PACKAGE}.pretrained")
    finally:
        if block:
            sys.modules.pop("safetensors.torch", None)


def pretrained_source(model: ModelConfig) -> PretrainedSource:
    """The source open_clip's ``create_model(model.arch, pretrained=model.pretrained)`` would use
    (the logic of ``open_clip.pretrained.download_pretrained`` with huggingface_hub and
    safetensors installed: the hub is preferred over a URL, safetensors over a pickle)."""
    arch, tag = str(model.arch), str(model.pretrained)
    registry = open_clip_registry()
    name = arch.replace("/", "-")
    cfg = registry.get_pretrained_cfg(name, tag)
    if not cfg:
        if os.path.isfile(tag):
            return PretrainedSource(arch, tag, {}, file=tag)
        tags = registry.list_pretrained_tags_by_model(name)
        known = f"its tags: {', '.join(tags)}" if tags else "open_clip has no pretrained weights for it"
        raise HubWeightsError(f"model.pretrained={tag} is not an open_clip pretrained tag of "
                              f"model.arch={arch} ({known}) nor a file")
    if "file" in cfg:
        return PretrainedSource(arch, tag, cfg, file=cfg["file"])
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or registry.HF_WEIGHTS_NAME
        names = (*registry._get_safe_alternatives(filename), filename)
        return PretrainedSource(arch, tag, cfg, repo_id=repo_id, filenames=names)
    return PretrainedSource(arch, tag, cfg, url=cfg["url"])


def cached_file(source: PretrainedSource) -> str | None:
    """The cached weights file open_clip would load for ``source``, or None."""
    if source.file is not None:
        return source.file if os.path.isfile(source.file) else None
    if source.repo_id is not None:
        for name in source.filenames:
            found = try_to_load_from_cache(source.repo_id, name)
            if isinstance(found, str):  # not None, nor the "known not to exist" marker
                return found
        return None
    target = source.url_target()
    return str(target) if target.is_file() else None


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the server of ``url`` cannot be reached (one request, no retry), or None when it
    answers (any HTTP status). Bounded by ``timeout`` even when name resolution hangs."""
    answer: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            answer.append(None)
        except urllib.error.HTTPError:
            answer.append(None)  # the server answered
        except (OSError, ValueError) as e:
            answer.append(str(getattr(e, "reason", None) or e) or type(e).__name__)

    thread = threading.Thread(target=probe, daemon=True, name="clipvg-hub-probe")
    thread.start()
    thread.join(timeout + 0.5)
    return answer[0] if answer else f"no answer within {timeout:.0f} s"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, as huggingface_hub reads it."""
    return bool(hf_constants.HF_HUB_OFFLINE)


def go_offline() -> None:
    """Load from the cache without asking the hub: this process (huggingface_hub reads the
    variable once, at import) and the processes it starts later (a local Ray's workers)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf_constants.HF_HUB_OFFLINE = True


# (arch, tag, hub cache) -> the cached file found: a process asks once (train-local's command line, then
# its loop; a search trial's every training), not once per call
_FOUND: dict[tuple[str, str], str] = {}


def load_checked_config(path: str | None, overrides: list[str], *, launcher: str, fetch: bool = True) -> Config:
    """A command's config (:func:`clipvg.config.load_config`) with ``model.pretrained``'s hub
    weights checked (:func:`ensure_pretrained`): bad input answered before any heavy import."""
    cfg = load_config(path, overrides, launcher=launcher)
    ensure_pretrained(cfg.model, fetch=fetch)
    return cfg


def ensure_pretrained(model: ModelConfig, *, fetch: bool = True) -> str | None:
    """Make sure ``model.pretrained``'s weights can be loaded on this machine; returns the cached
    file (None without ``model.pretrained``, or when left to another machine's cache).

    ``fetch``: download missing weights here, once (False: a remote cluster's nodes fetch their
    own; only an unreachable server is refused). Raises :class:`HubWeightsError` (one line)
    when they are not cached and cannot be downloaded."""
    if not model.pretrained:
        return None
    key = (str(model.arch), str(model.pretrained), str(hf_constants.HF_HUB_CACHE))
    if key in _FOUND and os.path.isfile(_FOUND[key]):
        return _FOUND[key]
    source = pretrained_source(model)
    found = cached_file(source)
    if source.file is not None:
        if found is None:
            raise HubWeightsError(f"model.pretrained={source.tag} (model.arch={source.arch}): "
                                  f"the file {source.file} does not exist")
        return found
    why = "HF_HUB_OFFLINE=1 is set" if offline() else None
    if why is None:
        reason = unreachable(source.server)
        why = f"{source.server} cannot be reached: {reason}" if reason else None
    if found is not None:
        if why is not None and not offline():
            go_offline()  # load from the cache; asking the hub again would only retry
        _FOUND[key] = found
        return found
    if why is not None:
        raise HubWeightsError(
            f"model.pretrained={source.tag} (model.arch={source.arch}): the weights are not cached "
            f"(looked for {source.locations()}) and cannot be downloaded ({why}); use a local CLIP "
            f"weights file instead: model.weights=PATH model.pretrained=null")
    if not fetch:
        return None
    _FOUND[key] = _download(source)
    return _FOUND[key]


def _download(source: PretrainedSource) -> str:
    """Download ``source`` with open_clip's own downloader (same files, same cache)."""
    print(f"clipvg: downloading the weights of model.pretrained={source.tag} (model.arch={source.arch}) "
          f"from {source.server} once, into {source.locations()}", file=sys.stderr, flush=True)
    # deferred: open_clip loads torch and torchvision (15-25 s); only a download needs it
    from open_clip.pretrained import download_pretrained

    try:
        download_pretrained(source.cfg)
    except Exception as e:  # open_clip raises RuntimeError / FileNotFoundError / URLError ...
        raise HubWeightsError(
            f"model.pretrained={source.tag} (model.arch={source.arch}): downloading from "
            f"{source.server} failed ({' '.join(str(e).split()) or type(e).__name__}); use a local "
            f"CLIP weights file instead: model.weights=PATH model.pretrained=null") from e
    found = cached_file(source)
    if found is None:
        raise HubWeightsError(f"model.pretrained={source.tag} (model.arch={source.arch}): downloaded, "
                              f"but not found at {source.locations()}")
    return found
