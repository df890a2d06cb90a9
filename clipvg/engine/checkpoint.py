"""The training state of a run as a local folder: model, optimizer, progress, config.

A checkpoint folder holds

* ``model.safetensors`` + ``model_config.json`` - exactly what :func:`clipvg.model.export_model`
  writes, so every checkpoint is also a model folder that :func:`clipvg.model.load_model` and
  ``clipvg predict`` accept;
* ``optimizer.pt`` - ``optimizer.state_dict()`` (tensors, numbers, lists and dicts only; read
  back with ``torch.load(weights_only=True)``, so no code from the file can ever run);
* ``config.yaml`` - the resolved run config (:func:`clipvg.config.save_config`), for humans and
  for reproducing the run;
* ``rng_state.pt`` (optional, the local engine's) - the random number generators' states at
  the end of the epoch (torch, Python, the data loader's shuffling, the augmentation), so a
  resumed single-process run draws what an uninterrupted one would; read back with
  ``weights_only=True`` like the optimizer state;
* ``state.json`` - :class:`TrainState` plus the learning-rate schedule name and a format
  version. It is written **last**, so its presence marks a complete folder.

This module only deals with a local folder and plain torch (no Ray): the Ray Train worker of
rank 0 calls :func:`save_training_state` into a temporary folder and Ray uploads it; on a restart
it downloads a checkpoint and calls :func:`load_training_state`. Loading is strict and checks
everything *before* touching the model or optimizer, so a refused checkpoint leaves them as they
were; every failure is a :class:`CheckpointError` naming the folder and the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from clipvg.config import Config, save_config
from clipvg.model.io import CONFIG_FILE, WEIGHTS_FILE, export_model
from clipvg.model.state_dict import short_list

FORMAT_VERSION = 1
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
RUN_CONFIG_FILE = "config.yaml"
_META_KEYS = ("format_version", "schedule", "saved_at")  # state.json keys that are not TrainState


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete, corrupt or does not fit the model."""


@dataclass
class TrainState:
    """Where a run stands after a completed epoch (what a restart needs besides the weights)."""

    epoch: int = 0  # completed epochs = the next epoch to run (0-based)
    global_step: int = 0  # optimizer steps taken so far
    samples_seen: int = 0  # training samples consumed so far (over all workers)
    best_acc: float = -1.0  # best validation Acc@0.5 so far
    best_epoch: int = -1  # 1-based epoch that reached it (-1 = none yet)
    history: list[dict] = field(default_factory=list)  # one record per completed epoch
    # Where the data stream resumes: the epoch to start, the batch within it, the train seed.
    # save_training_state fills in "seed" from the run config when it is absent.
    data_position: dict = field(default_factory=lambda: {"epoch": 0, "step_in_epoch": 0})


# JSON types accepted per TrainState field (an int counts as a float: a hand-edited best_acc
# may read 1 instead of 1.0)
_FIELD_TYPES = {"epoch": (int,), "global_step": (int,), "samples_seen": (int,),
                "best_acc": (int, float), "best_epoch": (int,), "history": (list,),
                "data_position": (dict,)}


# ------------------------------------------------------------------------------ save
def save_training_state(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                        state: TrainState, cfg: Config, rng_state: dict | None = None) -> Path:
    """Write the checkpoint folder (created if needed) and return its path.

    ``model`` is the plain model (a DDP or ``torch.compile`` wrapper is unwrapped here too).
    Re-saving into an existing folder first removes its ``state.json``, so a crash half-way
    never leaves an old "complete" marker next to new weights. ``rng_state`` (tensors, numbers,
    lists, dicts) goes to ``rng_state.pt``; without it an older ``rng_state.pt`` is removed.
    ``folder`` is a local folder (a storage URI is refused: upload the folder instead).
    """
    if "://" in str(folder):
        raise CheckpointError(f"save_training_state writes a local folder, not {folder}: save "
                              f"locally, then publish it (clipvg.data.storage.upload_folder)")
    folder = Path(folder)
    model = unwrap(model)
    if not hasattr(model, "config"):
        raise CheckpointError(f"cannot save to {folder}: the model has no .config (pass the "
                              f"CLIPVG built by clipvg.model.build_model)")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STATE_FILE).unlink(missing_ok=True)
    export_model(model, folder)
    _atomic(folder / OPTIMIZER_FILE, lambda tmp: torch.save(optimizer.state_dict(), tmp))
    if rng_state is not None:
        _atomic(folder / RNG_FILE, lambda tmp: torch.save(rng_state, tmp))
    else:
        (folder / RNG_FILE).unlink(missing_ok=True)
    save_config(cfg, folder / RUN_CONFIG_FILE)
    record = dataclasses.asdict(state)
    record["data_position"] = {"seed": cfg.train.seed, **record["data_position"]}
    meta = {"format_version": FORMAT_VERSION, "schedule": cfg.train.schedule,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    text = json.dumps({**meta, **record}, indent=2) + "\n"
    _atomic(folder / STATE_FILE, lambda tmp: Path(tmp).write_text(text))
    return folder


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` a sibling temporary file, then rename it over ``path`` (atomic on POSIX)."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


# ------------------------------------------------------------------------------ load
def read_rng_state(folder: str | Path) -> dict | None:
    """``rng_state.pt`` of a checkpoint folder (None when the folder has none)."""
    path = Path(folder) / RNG_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing {path}: it holds objects other than tensors, numbers and "
                              f"containers, so nothing was unpickled ({str(e).splitlines()[0]})"
                              ) from None
    except Exception as e:
        raise CheckpointError(f"{path} cannot be read as random-generator states: {e}") from None


def read_state(folder: str | Path) -> TrainState:
    """The :class:`TrainState` of ``folder/state.json`` (no weights are read)."""
    return _parse_state(Path(folder))[0]


def load_training_state(folder: str | Path, model: nn.Module,
                        optimizer: torch.optim.Optimizer | None = None, *,
                        schedule: str | None = None) -> TrainState:
    """Restore ``model`` (and ``optimizer`` unless None) from ``folder``; return its state.

    Strict: the folder's model config must equal ``model.config`` (weight sources aside), the
    weights must fill exactly the model's tensors with the same shapes, and the optimizer state
    must match the optimizer's parameter groups and shapes. With ``schedule`` given, the
    checkpoint's learning-rate schedule must be the same (a resumed run would otherwise follow
    a different curve). Nothing is modified unless every check passes.
    """
    folder = Path(folder)
    model = unwrap(model)
    state, meta = _parse_state(folder)
    if schedule is not None and meta.get("schedule") != schedule:
        raise CheckpointError(f"{folder / STATE_FILE}: the checkpoint was trained with schedule "
                              f"{meta.get('schedule')!r}, this run uses {schedule!r}")
    _check_model_config(folder, model)
    weights = _read_weights(folder, model)
    opt_state = _read_optimizer(folder, optimizer) if optimizer is not None else None
    model.load_state_dict(weights, strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(opt_state)
    return state


def _require(folder: Path, name: str) -> Path:
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    path = folder / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {folder} is incomplete: {name} is missing")
    return path


def _parse_state(folder: Path) -> tuple[TrainState, dict]:
    path = _require(folder, STATE_FILE)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format_version {raw.get('format_version')!r} "
                              f"(this clipvg reads {FORMAT_VERSION})")
    meta = {k: raw.pop(k) for k in _META_KEYS if k in raw}
    fields = {f.name: f for f in dataclasses.fields(TrainState)}
    unknown, missing = sorted(set(raw) - set(fields)), sorted(set(fields) - set(raw))
    if unknown or missing:
        raise CheckpointError(f"{path}: unknown keys {unknown}, missing keys {missing}")
    for name, value in raw.items():
        accepted = _FIELD_TYPES[name]
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise CheckpointError(f"{path}: {name} should be {accepted[-1].__name__}, "
                                  f"got {value!r}")
    raw["best_acc"] = float(raw["best_acc"])
    return TrainState(**raw), meta


def _model_config_dict(model: nn.Module) -> dict:
    # deferred: loads open_clip; paid only when this runs, not on import
    from clipvg.model.clipvg import offline_config

    # through JSON, so tuples/lists and the like compare as they were written
    return json.loads(json.dumps(dataclasses.asdict(offline_config(model.config))))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _check_model_config(folder: Path, model: nn.Module) -> None:
    path = _require(folder, CONFIG_FILE)
    if not hasattr(model, "config"):
        raise CheckpointError(f"cannot restore {folder}: the model has no .config (pass the "
                              f"CLIPVG built by clipvg.model.build_model)")
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    ours, theirs = _flatten(_model_config_dict(model)), _flatten(saved)
    diff = [f"{k}: checkpoint {theirs.get(k, '<absent>')!r} vs model {ours.get(k, '<absent>')!r}"
            for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if diff:
        raise CheckpointError(f"{path} describes a different model than the one being restored "
                              f"(model config mismatch): {short_list(diff)}")


def _read_weights(folder: Path, model: nn.Module) -> dict[str, Tensor]:
    path = _require(folder, WEIGHTS_FILE)
    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises its own SafetensorError on corrupt headers
        raise CheckpointError(f"{path} cannot be read as safetensors: {e}") from None
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    wrong = [f"{k}: file {tuple(weights[k].shape)} vs model {tuple(v.shape)}"
             for k, v in own.items() if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path} does not fit the model: missing keys {short_list(missing)}, "
                              f"unexpected keys {short_list(unexpected)}, shape mismatches "
                              f"{short_list(wrong)}")
    return weights


def _read_optimizer(folder: Path, optimizer: torch.optim.Optimizer) -> dict:
    path = _require(folder, OPTIMIZER_FILE)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing {path}: it holds objects other than tensors, numbers and "
                              f"containers, so nothing was unpickled ({str(e).splitlines()[0]})"
                              ) from None
    except Exception as e:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"{path} cannot be read as an optimizer state: {e}") from None
    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list)):
        raise CheckpointError(f"{path} is not an optimizer state_dict (no 'state'/'param_groups')")
    ours = optimizer.param_groups
    saved_sizes = [len(g.get("params", ())) for g in saved["param_groups"]]
    our_sizes = [len(g["params"]) for g in ours]
    if saved_sizes != our_sizes:
        raise CheckpointError(f"{path} does not fit the optimizer: parameter groups of sizes "
                              f"{saved_sizes} in the file vs {our_sizes} (different trainable "
                              f"parameters, e.g. another model.freeze?)")
    # torch checks group sizes only; a moment tensor of the wrong shape would fail much later
    params = {i: p for g_saved, g in zip(saved["param_groups"], ours)
              for i, p in zip(g_saved["params"], g["params"])}
    wrong = [f"param {i} {name}: file {tuple(v.shape)} vs model {tuple(params[i].shape)}"
             for i, entry in saved["state"].items() if i in params
             for name, v in entry.items()
             if isinstance(v, Tensor) and v.dim() > 0 and v.shape != params[i].shape]
    stray = [i for i in saved["state"] if i not in params]
    if wrong or stray:
        raise CheckpointError(f"{path} does not fit the optimizer: shape mismatches "
                              f"{short_list(wrong)}, state for unknown parameters "
                              f"{short_list([str(i) for i in stray])}")
    return saved
