"""A restricted reader for the ``.pth`` files pseudo-label tools save with ``torch.save``
(Pseudo-Q's detection results, CLIP-VG's caption data), without torch and without running the
file's code.

Like :mod:`clipvg.sources.official.unpickler` (which reads split files), every global is refused at
the opcode that asks for it - except the few numpy needs to rebuild a numeric array or scalar
(Pseudo-Q's attribute files keep each box's 400 attribute confidences as a float32 array) and
``_codecs.encode`` (str -> latin-1 bytes only: how pickle protocol 2, ``torch.save``'s default,
writes an array's bytes). Those names are mapped to numpy's own functions (and a latin-1
encoder), as ``torch.load(weights_only=True)`` allows them; after
loading, every array must be numeric (bool / int / float) and every other object a dict, list,
tuple, str, bytes, number or None. Torch tensors (persistent storage ids) are refused with a hint.
"""

from __future__ import annotations

import _compat_pickle  # Python 2 -> 3 names, as pickle's own find_class maps them
import copyreg
import io
import pickle
import pickletools
import posixpath
import zipfile
from typing import Any

import numpy as np

from clipvg.sources.official.unpickler import (
    LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, UnsafePickleError,
)

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array rebuilder, any version
_SCALAR = np.float32(0).__reduce__()[0]  # numpy's scalar rebuilder
_NUMERIC = "biuf"  # bool, int, uint, float


def _dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject or dtype.kind not in _NUMERIC:
        raise UnsafePickleError(f"refusing a numpy array of dtype {dtype}: only numeric arrays")
    return dtype


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """How protocol-2 pickles (``torch.save``'s default) spell bytes: ``_codecs.encode``."""
    if type(text) is not str or encoding.replace("-", "").lower() != "latin1":
        raise UnsafePickleError("refusing _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


_GLOBALS = {
    ("_codecs", "encode"): _latin1,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, stream: io.BytesIO, name: str):
        super().__init__(stream)
        self._name = name

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        if module.split(".")[0] == "torch":
            self.persistent_load(None)
        raise UnsafePickleError(f"refusing to load {self._name}: it asks to import the global "
                                f"{module}.{name}; nothing was executed")

    def persistent_load(self, pid: Any):  # noqa: D102 - pickle API
        raise UnsafePickleError(
            f"cannot read {self._name}: it holds torch tensors (storage references); save the "
            "values as lists or numpy arrays (tensor.tolist()), or convert the file to JSON")


def _unpickle(stream: io.BytesIO, name: str) -> Any:
    if copyreg._inverted_registry:  # EXT opcodes could fetch a registered callable: refuse them
        start = stream.tell()
        for op, _, _ in pickletools.genops(stream):
            if op.name.startswith("EXT"):
                raise UnsafePickleError(f"refusing to load {name}: it uses a pickle extension code")
            if op.name == "STOP":
                break
        stream.seek(start)
    try:
        return _Unpickler(stream, name).load()
    except UnsafePickleError as e:
        if name in str(e):
            raise
        raise UnsafePickleError(f"cannot read {name}: {e}") from None
    except Exception as e:  # noqa: BLE001 - anything a corrupt pickle raises
        raise UnsafePickleError(f"cannot read {name}: corrupt or unsupported pickle "
                                f"({type(e).__name__}: {e})") from None


def _plain(obj: Any, name: str) -> Any:
    """``obj`` with numpy scalars as Python numbers; arrays kept (numeric only); other types
    refused."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _NUMERIC:
            raise UnsafePickleError(f"refusing {name}: a numpy array of dtype {obj.dtype}")
        return obj
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _NUMERIC:
            raise UnsafePickleError(f"refusing {name}: a numpy scalar of dtype {obj.dtype}")
        return obj.item()
    if type(obj) in (str, bytes, int, float, bool, type(None)):
        return obj
    if type(obj) in (list, tuple):
        return [_plain(v, name) for v in obj]
    if type(obj) is dict:
        return {_plain(k, name): _plain(v, name) for k, v in obj.items()}
    raise UnsafePickleError(f"refusing {name}: it holds a {type(obj).__name__}")


def loads_pth(data: bytes, name: str) -> Any:
    """The object of a ``torch.save`` file (zip or legacy format) or a plain pickle."""
    if data[:4] == b"PK\x03\x04":
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as e:
            raise UnsafePickleError(f"cannot read {name}: broken zip archive ({e})") from None
        members = [m for m in archive.namelist()
                   if posixpath.basename(m) == "data.pkl" and m.count("/") == 1]
        if len(members) != 1:
            raise UnsafePickleError(f"cannot read {name}: not a torch.save archive")
        obj = _unpickle(io.BytesIO(archive.read(members[0])), name)
    else:
        stream = io.BytesIO(data)
        obj = _unpickle(stream, name)
        if type(obj) is int and obj == LEGACY_MAGIC_NUMBER:  # torch's legacy sequence
            if _unpickle(stream, name) != LEGACY_PROTOCOL_VERSION:
                raise UnsafePickleError(f"cannot read {name}: unsupported legacy torch format")
            _unpickle(stream, name)  # sys info
            obj = _unpickle(stream, name)
            if _unpickle(stream, name) != []:
                raise UnsafePickleError(f"cannot read {name}: it holds torch tensors")
    try:
        return _plain(obj, name)
    except RecursionError:
        raise UnsafePickleError(f"refusing {name}: nested too deeply") from None
