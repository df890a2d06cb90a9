"""What the record converters share: reading an input file (JSON, JSON Lines, ``.pth``), the
dataset's images (names and sizes), checked values with one-line errors naming the file and the
row, and the bookkeeping of records whose image is not in the dataset.

Image names: a record's image is looked up in the dataset's ``images`` table by its exact name,
else by its base name (tools that write full paths, e.g. CLIP-VG's caption data); a record whose
image is in neither is dropped and counted (:class:`Collected`).
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import pyarrow as pa

from clipvg.data import storage
from clipvg.errors import UserError
from clipvg.sources.official.unpickler import UnsafePickleError
from clipvg.sources.records.pth import loads_pth

PTH_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle")
IMAGE_KEYS = ("image", "image_file", "file_name")  # accepted names of a record's image field
FIRST_FEW = 5  # unknown image names listed in reports
BATCH = 65536  # rows per Arrow batch while converting


class RecordsError(UserError):
    """A record file cannot be converted; the message names the file (and row, key)."""


def read_json(uri: str, **storage_options: Any) -> Any:
    """A JSON document; a one-line error naming the file and the position when it is not."""
    text = _text(uri, **storage_options)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordsError(f"{uri}: not valid JSON (line {e.lineno}, column {e.colno}: "
                           f"{e.msg})") from None


def _read(uri: str, **storage_options: Any) -> bytes:
    try:
        return storage.read_bytes(uri, **storage_options)
    except FileNotFoundError:
        raise RecordsError(f"{uri}: no such file") from None


def _text(uri: str, **storage_options: Any) -> str:
    data = _read(uri, **storage_options)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordsError(f"{uri}: not UTF-8 text (byte {e.start})") from None


def read_jsonl(uri: str, **storage_options: Any) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` per non-blank line, streamed; ``where`` is ``line N`` (1-based)."""
    fs, path = storage.filesystem(uri, **storage_options)
    try:
        f = fs.open(path, "rb")
    except FileNotFoundError:
        raise RecordsError(f"{uri}: no such file") from None
    with f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordsError(f"{uri}: line {n}: not UTF-8 text (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordsError(f"{uri}: line {n}: not valid JSON ({e.msg})") from None


def read_pth(uri: str, **storage_options: Any) -> Any:
    """The object of a ``torch.save`` / pickle file, read without running code (:mod:`.pth`)."""
    data = _read(uri, **storage_options)
    try:
        return loads_pth(data, str(uri))
    except UnsafePickleError as e:
        raise RecordsError(str(e)) from None


def read_any(uri: str, **storage_options: Any) -> Any:
    """By suffix: ``.pth``/``.pt``/``.pkl`` (restricted unpickling), else JSON."""
    if str(uri).lower().endswith(PTH_SUFFIXES):
        return read_pth(uri, **storage_options)
    return read_json(uri, **storage_options)


def read_rows(uri: str, **storage_options: Any) -> Iterator[tuple[str, Any]]:
    """A file of per-image records as ``(where, record)``: JSON Lines (``.jsonl``, streamed;
    where = ``line N``), or a JSON / ``.pth`` file holding a list (where = ``row N``, 0-based;
    read whole)."""
    if str(uri).lower().endswith(".jsonl"):
        return read_jsonl(uri, **storage_options)
    obj = read_any(uri, **storage_options)
    if not isinstance(obj, list):
        raise RecordsError(f"{uri}: expected a list of records (or a .jsonl file), got a "
                           f"{type(obj).__name__}")
    return ((f"row {i}", r) for i, r in enumerate(obj))


@dataclass
class Images:
    """The dataset's images: ``image_id`` -> (width, height), with the name lookup."""

    sizes: dict[str, tuple[int, int]]
    by_base: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: pa.Table) -> "Images":
        ids = table.column("image_id").to_pylist()
        sizes = dict(zip(ids, zip(table.column("width").to_pylist(),
                                  table.column("height").to_pylist())))
        by_base: dict[str, str] = {}
        for i in ids:
            by_base.setdefault(posixpath.basename(i.replace("\\", "/")), i)
        return cls(sizes, by_base)

    def resolve(self, name: str) -> str | None:
        """The dataset's image_id of ``name``: itself, else its base name's; None if neither."""
        if name in self.sizes:
            return name
        return self.by_base.get(posixpath.basename(str(name).replace("\\", "/")))


@dataclass
class Collected:
    """Rows of one record table (kept as Arrow batches of :data:`BATCH` rows, so a file of
    millions of records does not live as Python objects) and what was left out."""

    schema: pa.Schema
    records: int = 0  # records read from the input(s)
    dropped: int = 0  # records of images not in the dataset
    unknown: list[str] = field(default_factory=list)  # their image names, first seen first
    notes: list[str] = field(default_factory=list)  # other things the user should know
    rows: int = 0
    _batches: list = field(default_factory=list)
    _pending: list = field(default_factory=list)
    _images: set = field(default_factory=set)
    _unknown_set: set = field(default_factory=set)
    _counts: dict = field(default_factory=dict)

    def add(self, row: dict) -> None:
        self._pending.append(row)
        self._images.add(row["image_id"])
        self.rows += 1
        if len(self._pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._batches.append(pa.RecordBatch.from_pylist(self._pending, schema=self.schema))
            self._pending = []

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self._batches, schema=self.schema)

    def drop(self, name: str, n: int = 1) -> None:
        self.dropped += n
        if name not in self._unknown_set:
            self._unknown_set.add(name)
            self.unknown.append(name)

    def next_index(self, image_id: str) -> int:
        """0, 1, 2, ... per image: the k of its ``{image_id}#d{k}``-style row ids."""
        k = self._counts.get(image_id, 0)
        self._counts[image_id] = k + 1
        return k

    @property
    def images(self) -> int:
        return len(self._images)

    def dropped_line(self) -> str | None:
        if not self.dropped:
            return None
        more = " ..." if len(self.unknown) > FIRST_FEW else ""
        few = ", ".join(self.unknown[:FIRST_FEW]) + more
        return (f"dropped {self.dropped} record(s) of {len(self.unknown)} image(s) not in the "
                f"dataset's images table: {few}")

    def check_not_empty(self, uri: str, images: Images) -> None:
        """No row at all is an error: an empty file, or no image name that matches."""
        if self.rows:
            return
        if self.dropped:
            have = ", ".join(list(images.sizes)[:3])
            raise RecordsError(
                f"{uri}: none of its {len(self.unknown)} image name(s) is in the dataset's images "
                f"table (first: {', '.join(self.unknown[:3])}; the dataset has e.g. {have}); "
                "nothing was written")
        raise RecordsError(f"{uri}: no records to convert; nothing was written")


def image_name(record: dict, uri: str, where: str) -> str:
    """A JSON record's image name (:data:`IMAGE_KEYS`)."""
    for key in IMAGE_KEYS:
        if key in record:
            value = record[key]
            if not isinstance(value, str) or not value:
                raise RecordsError(f"{uri}: {where}: {key!r} must be a non-empty string, got "
                                   f"{value!r:.60}")
            return value
    raise RecordsError(f"{uri}: {where}: missing key 'image' (the image's file name)")


def require(record: Any, key: str, uri: str, where: str) -> Any:
    if not isinstance(record, dict):
        raise RecordsError(f"{uri}: {where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise RecordsError(f"{uri}: {where}: missing key {key!r}")
    return record[key]


def number(value: Any, uri: str, where: str) -> float:
    """A finite number (bool refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RecordsError(f"{uri}: {where}: expected a finite number, got {value!r:.60}")
    return float(value)


def probability(value: Any, uri: str, where: str) -> float:
    v = number(value, uri, where)
    if not 0.0 <= v <= 1.0:
        raise RecordsError(f"{uri}: {where}: must be in [0, 1], got {v}")
    return v


def numbers(value: Any, n: int, uri: str, where: str) -> list[float]:
    """At least ``n`` finite numbers (a list, tuple or numeric array); all of them returned."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or len(value) < n:
        raise RecordsError(f"{uri}: {where}: expected {n} numbers, got {value!r:.80}")
    return [number(v, uri, f"{where}[{i}]") for i, v in enumerate(value)]


def iou(a: Iterable[float], b: Iterable[float]) -> float:
    """IoU of two x0, y0, x1, y1 boxes (0 when they do not overlap)."""
    a0, a1, a2, a3 = a
    b0, b1, b2, b3 = b
    iw, ih = min(a2, b2) - max(a0, b0), min(a3, b3) - max(a1, b1)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a2 - a0) * (a3 - a1) + (b2 - b0) * (b3 - b1) - inter)


def enumerate_mapping(obj: Any, uri: str, what: str) -> Iterator[tuple[str, Any]]:
    """The items of a dict keyed by image file name (Pseudo-Q's layout)."""
    if not isinstance(obj, dict):
        raise RecordsError(f"{uri}: expected {what} (a dict: image file name -> list), got a "
                           f"{type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise RecordsError(f"{uri}: key {key!r:.60} is not an image file name")
        yield key, value
