"""A restricted reader for the official CLIP-VG split files (``*.pth`` from the internet).

A split file is a pickled Python list of per-sample entries made of lists, tuples, strings and
numbers only (method doc §1.2). Unpickling an arbitrary file can run code (a ``__reduce__`` that
returns ``os.system``), so this module never calls ``torch.load`` or ``pickle.load`` on one.
Instead a :class:`pickle.Unpickler` subclass refuses *every* global (``find_class``) and every
persistent id (how ``torch.save`` references tensor storages) at the opcode that asks for it -
before any object is built or called. Without a global nothing callable can reach the stack,
so the only objects the pickle can make are the built-in literals (numbers, strings, bytes,
None, lists, tuples, dicts, sets); after loading, :func:`check_types` walks the result and
refuses everything but lists, tuples, str, bytes, int, float, bool and None.

Three on-disk forms are read:

* ``torch.save`` zip format: a zip archive whose ``<archive>/data.pkl`` is the pickle;
* ``torch.save(..., _use_new_zipfile_serialization=False)`` (legacy): a sequence of pickles -
  magic number, protocol version, a sys-info dict, the object, then the list of storage keys;
* a plain ``pickle.dump`` of the list.
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

from clipvg.data import storage

# torch.serialization's legacy-format header values (stable since 2017).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

ALLOWED_TYPES = (list, tuple, str, bytes, int, float, bool, type(None))
SPLIT_FILE = "a split file may hold only lists, tuples, strings and numbers"


class UnsafePickleError(ValueError):
    """The file needs something outside the allow-list; nothing from it was executed."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global outside ``allowed`` ((module, name) -> the object to use instead)
    and every persistent id, naming the file, what was asked for and ``rule`` (what the file
    may hold)."""

    def __init__(self, stream: io.BytesIO, name: str, allowed: dict | None = None, rule: str = SPLIT_FILE):
        super().__init__(stream)
        self._name, self._allowed, self._rule = name, allowed or {}, rule

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        # Protocol-2 pickles (torch.save) spell builtins as __builtin__: name the Python 3 one
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise UnsafePickleError(
            f"refusing to load {self._name}: it asks to import the global {module}.{name}; "
            f"{self._rule}, so nothing was executed")

    def persistent_load(self, pid: Any):  # noqa: D102 - pickle API
        what = pid[0] if isinstance(pid, tuple) and pid else type(pid).__name__
        raise UnsafePickleError(
            f"refusing to load {self._name}: it references external storage (persistent id "
            f"{what!r}, e.g. a tensor); {self._rule}")


def _refuse_extensions(stream: io.BytesIO, name: str) -> None:
    """EXT1/2/4 opcodes fetch a callable from copyreg's extension registry, and a cached one
    bypasses find_class. The registry is empty unless some library filled it; only then is
    the pickle scanned (in pure Python, so slower) and any EXT opcode refused."""
    if not copyreg._inverted_registry:
        return
    start = stream.tell()
    try:
        for op, arg, _ in pickletools.genops(stream):
            if op.name.startswith("EXT"):
                raise UnsafePickleError(f"refusing to load {name}: it uses the pickle extension "
                                        f"code {arg}, which names a global")
            if op.name == "STOP":
                break
    except UnsafePickleError:
        raise
    except Exception:  # malformed: reported by the real load below
        pass
    stream.seek(start)


def _unpickle(stream: io.BytesIO, name: str, allowed: dict | None = None, rule: str = SPLIT_FILE) -> Any:
    _refuse_extensions(stream, name)
    try:
        return _RestrictedUnpickler(stream, name, allowed, rule).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError, UnicodeDecodeError) as e:
        raise UnsafePickleError(f"cannot read {name}: corrupt or unsupported "
                                f"pickle ({type(e).__name__}: {e})") from None


def check_types(obj: Any, name: str) -> None:
    """Refuse any object outside lists, tuples, str, bytes, int, float, bool and None.

    Iterative (no recursion limit on deep nesting); the error names the file and the path of
    the offending element, e.g. ``[12][4][0]``.
    """
    stack: list[tuple[Any, str]] = [(obj, "")]
    while stack:
        item, where = stack.pop()
        if type(item) not in ALLOWED_TYPES:  # exact types: no subclasses of list/str
            raise UnsafePickleError(
                f"refusing {name}: element {where or '(top level)'} is a "
                f"{type(item).__name__}; a split file may hold only lists, tuples, strings "
                "and numbers")
        if isinstance(item, (list, tuple)):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))


def _data_pkl(data: bytes, name: str) -> bytes:
    """The ``*/data.pkl`` member of a torch zip archive."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.namelist()
                   if posixpath.basename(m) == "data.pkl" and m.count("/") == 1]
        if len(members) != 1:
            raise UnsafePickleError(f"cannot read {name}: a torch zip archive needs exactly one "
                                    f"<archive>/data.pkl, found {members or 'none'}")
        return archive.read(members[0])
    except zipfile.BadZipFile as e:
        raise UnsafePickleError(f"cannot read {name}: broken zip archive ({e})") from None


def _load_legacy_or_plain(data: bytes, name: str, allowed: dict | None, rule: str) -> Any:
    """A plain pickle, or torch's legacy sequence (magic, protocol, sys info, object, keys)."""
    stream = io.BytesIO(data)
    first = _unpickle(stream, name, allowed, rule)
    if not (type(first) is int and first == LEGACY_MAGIC_NUMBER):
        if stream.read(1):
            raise UnsafePickleError(f"cannot read {name}: trailing data after the pickle")
        return first
    protocol = _unpickle(stream, name)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise UnsafePickleError(f"cannot read {name}: legacy torch format with unsupported "
                                f"protocol version {protocol!r}")
    _unpickle(stream, name)  # sys info: a small dict of endianness and type sizes; unused
    obj = _unpickle(stream, name, allowed, rule)
    keys = _unpickle(stream, name)
    if keys != []:  # storages would have been refused as persistent ids already
        raise UnsafePickleError(f"refusing {name}: it carries tensor storages {keys!r:.80}")
    return obj


def loads_restricted(data: bytes, name: str, allowed: dict | None = None, rule: str = SPLIT_FILE) -> Any:
    """The object of a pickle in any of the three forms, unpickled with no global but those of
    ``allowed`` and no persistent id; every refusal names ``name`` and says ``rule``. The
    caller checks the object's types."""
    if data[:4] == b"PK\x03\x04":
        return _unpickle(io.BytesIO(_data_pkl(data, name)), name, allowed, rule)
    return _load_legacy_or_plain(data, name, allowed, rule)


def loads_split(data: bytes, name: str) -> list:
    """Decode the bytes of a split file (any of the three forms); see :func:`load_split_file`."""
    obj = loads_restricted(data, name)
    check_types(obj, name)
    if not isinstance(obj, list):
        raise UnsafePickleError(f"cannot use {name}: a split file holds a list of entries, "
                                f"this one holds a {type(obj).__name__}")
    return obj


def load_split_file(path_or_uri: str, **storage_options: Any) -> list:
    """Read an official split file safely; raises :class:`UnsafePickleError` naming the file.

    ``path_or_uri`` may be a local path or any URI of :mod:`clipvg.data.storage`
    (``s3://...`` with ``endpoint_url=``). Entries are returned as stored (tuples or lists);
    their shape is checked by the parser, not here.
    """
    data = storage.read_bytes(path_or_uri, **storage_options)
    return loads_split(data, str(path_or_uri))
