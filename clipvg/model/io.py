"""clipvg's own model format: a folder with ``model.safetensors`` + ``model_config.json``.

* :func:`export_model` writes one (weight sources cleared: the weights live in the folder);
* :func:`load_model` builds the model of the config and loads the weights strictly;
* :func:`read_weights` reads a safetensors file and never unpickles anything.

Official checkpoints are turned into this format by :mod:`clipvg.model.convert`.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from clipvg.config import ConfigError, ModelConfig, from_dict
from clipvg.errors import UserError
from clipvg.model.state_dict import mismatch

if TYPE_CHECKING:
    from clipvg.model.clipvg import CLIPVG

# open_clip and the model modules are imported inside the functions that build models, so that
# reading (and refusing) a model folder stays fast: importing open_clip takes seconds.

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"


class ConversionError(UserError, ValueError):
    """The input cannot be turned into a clipvg model (clear, user-facing message)."""


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Inverse of ``dataclasses.asdict`` for :class:`ModelConfig`, validated like any config."""
    try:
        return from_dict(ModelConfig, d, "model")
    except ConfigError as e:
        raise ConversionError(f"invalid model config: {e}") from None


# ------------------------------------------------------------------------------ export
def export_model(model: CLIPVG, folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.config`` as ``model_config.json`` (weight
    sources cleared: the weights now live in the folder)."""
    # deferred: loads open_clip; paid only when this runs, not on import
    from clipvg.model.clipvg import offline_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    text = json.dumps(dataclasses.asdict(offline_config(model.config)), indent=2)
    (folder / CONFIG_FILE).write_text(text + "\n")
    return folder


def _weights_file_problem(path: Path) -> str:
    """Why ``path`` is not a safetensors file, from its first bytes (nothing is unpickled)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        return ("it is a pickle / torch.save archive, not safetensors. clipvg never unpickles "
                "model files (loading a pickle can run code); convert official checkpoints with "
                "`clipvg convert-official`")
    return "it is truncated or is not a safetensors file"


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``model.safetensors`` file. Only the safetensors format is read (a
    header of JSON, then raw bytes): a pickle saved under that name is refused, never loaded.
    Raises :class:`ConversionError` naming the file."""
    path = Path(path)
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as e:
        raise ConversionError(f"cannot read {path}: {_weights_file_problem(path)} "
                              f"({_first_line(e)})") from None
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {e}") from None


def load_model_at(model_dir: str, **storage_options: Any) -> CLIPVG:
    """:func:`load_model` of a model folder that is local or on storage (read from a temporary
    copy); a folder that does not load is a ConversionError naming ``model_dir``."""
    # deferred: fsspec and pyarrow (storage); reading a local folder needs neither
    from clipvg.data import storage

    if not storage.is_uri(model_dir):
        return load_model(storage.local_path(model_dir) or model_dir)
    with tempfile.TemporaryDirectory(prefix="clipvg-model-") as tmp:
        storage.download_folder(model_dir, tmp, **storage_options)
        try:
            return load_model(tmp)
        except ConversionError as e:  # name the folder on storage, not the temporary copy
            raise ConversionError(str(e).replace(tmp, model_dir)) from None


def load_model(folder: str | Path) -> CLIPVG:
    """Build the model of ``folder/model_config.json`` and load ``model.safetensors`` strictly.

    Returns the model in eval mode. A missing, truncated or foreign file, or weights that do not
    fit the config, raise :class:`ConversionError` naming the file; the weights are read (and
    checked) before the model is built.
    """
    # deferred: loads open_clip; paid only when this runs, not on import
    from clipvg.model.clipvg import build_model, offline_config

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ConversionError(f"{folder} is not a clipvg model folder: {name} is missing")
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"cannot read {folder / CONFIG_FILE}: {e}") from None
    cfg = model_config_from_dict(raw)
    state = read_weights(folder / WEIGHTS_FILE)
    model = build_model(offline_config(cfg))
    problem = mismatch(model.state_dict(), state)
    if problem:
        raise ConversionError(f"{folder / WEIGHTS_FILE} does not fit {folder / CONFIG_FILE}: {problem}")
    model.load_state_dict(state, strict=True)
    return model.eval()
