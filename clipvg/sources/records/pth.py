"""A restricted reader for the ``.pth`` files pseudo-label tools save with ``torch.save``
(Pseudo-Q's detection results, CLIP-VG's caption data), without torch and without running the
file's code.

The split files' restricted unpickler (:mod:`clipvg.sources.official.unpickler`) reads them: every global is refused at
the opcode that asks for it - except the few numpy needs to rebuild a numeric array or scalar
(Pseudo-Q's attribute files keep each box's 400 attribute confidences as a float32 array) and
``_codecs.encode`` (str -> latin-1 bytes only: how pickle protocol 2, ``torch.save``'s default,
writes an array's bytes). Those names are mapped to numpy's own functions (and a latin-1
encoder), as ``torch.load(weights_only=True)`` allows them; after
loading, every array must be numeric (bool / int / float) and every other object a dict, list,
tuple, str, bytes, number or None. Torch tensors (persistent storage ids) are refused with a hint.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clipvg.sources.official.unpickler import UnsafePickleError, loads_restricted

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array rebuilder, any version
_SCALAR = np.float32(0).__reduce__()[0]  # numpy's scalar rebuilder
_NUMERIC = "biuf"  # bool, int, uint, float
RULE = ("a records file may hold only dicts, lists, strings, numbers and numeric numpy arrays (save "
        "torch tensors as lists, tensor.tolist(), or the file as JSON)")


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
    """The object of a ``torch.save`` file (zip or legacy format) or a plain pickle, read by the
    split files' restricted unpickler with numpy's array / scalar rebuilders allowed."""
    try:
        obj = loads_restricted(data, name, _GLOBALS, RULE)
    except UnsafePickleError as e:
        if name in str(e):
            raise
        raise UnsafePickleError(f"cannot read {name}: {e}") from None  # a numpy rebuilder refused
    try:
        return _plain(obj, name)
    except RecursionError:
        raise UnsafePickleError(f"refusing {name}: nested too deeply") from None
