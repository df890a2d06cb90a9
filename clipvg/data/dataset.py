"""Reading a dataset at a URI for the local (non-Ray) engine.

:func:`load_split` returns the samples of one split as plain records; :class:`GroundingDataset`
is a torch map-style dataset over them that opens each sample's image (a file under the
dataset root, or the ``bytes`` column of the images table), converts it to RGB and returns
``(transform(image, box, text), sample_id)``.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image
from torch.utils.data import Dataset

from clipvg.data import storage
from clipvg.data.schema import IMAGES, SAMPLES, SchemaError, validate_table


class DatasetError(ValueError):
    """A row of a dataset cannot be used; the message names the table/file and row."""


@dataclass(frozen=True, eq=False)  # eq on a numpy field would be ambiguous
class SampleRecord:
    sample_id: str
    image_id: str
    text: str
    box_xyxy: np.ndarray  # float32 (4,): x0, y0, x1, y1 in original pixels
    expr_type: str | None = None
    box_trunc: np.ndarray | None = None  # the official loader's integer box, where imported


def load_split(uri: str, split: str, **storage_options: Any) -> list[SampleRecord]:
    """The samples of ``split`` in the dataset at ``uri``, in table order.

    The samples table is validated first, so a bad row fails here with its row number rather
    than later inside a DataLoader worker.
    """
    where = storage.join(uri, "samples")
    table = storage.read_table(where, **storage_options)
    validate_table(table, SAMPLES, where=where)
    mask = pc.equal(table.column("split"), split)
    rows = table.filter(mask)
    if rows.num_rows == 0:
        found = sorted(pc.unique(table.column("split")).to_pylist())
        raise KeyError(f"split {split!r} not found in {where}; splits there: {found}")
    return records_from_table(rows)


def records_from_table(rows: pa.Table) -> list[SampleRecord]:
    """Sample records of a samples table's rows (any split; e.g. a curriculum's pool)."""
    boxes = np.asarray(rows.column("box").combine_chunks().flatten(), dtype=np.float32)
    boxes = boxes.reshape(-1, 4)
    expr = (rows.column("expr_type").to_pylist() if "expr_type" in rows.column_names
            else [None] * rows.num_rows)
    trunc = rows.column("box_trunc").to_pylist() if "box_trunc" in rows.column_names else None
    return [
        SampleRecord(sid, iid, text, boxes[k].copy(), et,
                     None if trunc is None or trunc[k] is None else np.asarray(trunc[k], np.float32))
        for k, (sid, iid, text, et) in enumerate(zip(
            rows.column("sample_id").to_pylist(), rows.column("image_id").to_pylist(),
            rows.column("text").to_pylist(), expr))
    ]


class GroundingDataset(Dataset):
    """Map-style dataset of one split: item ``i`` = ``(transform(image, box, text), sample_id)``.

    ``transform`` gets a fresh RGB PIL image (safe to modify), a float32 ``(4,)`` xyxy box
    (a copy) and the text; without a transform the item is ``((image, box, text), sample_id)``.
    Decoded images are cached per ``image_id`` in a bounded LRU (``cache_size`` images, 0 to
    disable): a synthetic image has ~4 expressions, so an epoch decodes it once instead of 4x.
    With DataLoader workers each worker holds its own cache. ``official_boxes``: hand the
    transform the official loader's integer box (``box_trunc``) where the dataset has one
    (``data.box_int_truncation``; see docs/data.md).
    """

    def __init__(
        self,
        uri: str,
        split: str,
        transform: Callable[[Image.Image, np.ndarray, str], Any] | None = None,
        *,
        cache_size: int = 512,
        official_boxes: bool = False,
        samples: pa.Table | None = None,
        **storage_options: Any,
    ) -> None:
        self.official_boxes = official_boxes
        self.uri = uri
        self.split = split
        self.transform = transform
        self.cache_size = cache_size
        self.storage_options = storage_options
        # ``samples``: these rows (e.g. a curriculum's training pool) instead of the split's
        self.records = (load_split(uri, split, **storage_options) if samples is None
                        else records_from_table(samples))
        self._images = self._load_images()
        self._cache: OrderedDict[str, Image.Image] = OrderedDict()

    def _load_images(self) -> dict[str, tuple[str | None, bytes | None]]:
        """image_id -> (uri, bytes) for the images this split uses (bytes kept only for
        those, so a split of an embedded world does not hold the whole world in memory)."""
        where = storage.join(self.uri, "images")
        table = storage.read_table(where, **self.storage_options)
        try:
            validate_table(table, IMAGES, where=where)
        except SchemaError as exc:
            raise DatasetError(str(exc)) from exc
        needed = {r.image_id for r in self.records}
        wanted = pa.array(sorted(needed), type=pa.string())
        table = table.filter(pc.is_in(table.column("image_id"), value_set=wanted))
        n = table.num_rows
        uris = table.column("uri").to_pylist() if "uri" in table.column_names else [None] * n
        raw = table.column("bytes").to_pylist() if "bytes" in table.column_names else [None] * n
        images = dict(zip(table.column("image_id").to_pylist(), zip(uris, raw)))
        for k, r in enumerate(self.records):
            if r.image_id not in images:
                raise DatasetError(
                    f"{storage.join(self.uri, 'samples')} split {self.split!r} row {k} "
                    f"(sample {r.sample_id}): image_id {r.image_id!r} is not in {where}"
                )
        return images

    def __len__(self) -> int:
        return len(self.records)

    def _decode(self, image_id: str) -> Image.Image:
        rel, data = self._images[image_id]
        where = storage.resolve(self.uri, rel) if rel is not None else f"images table (bytes of {image_id})"
        try:
            if data is None:
                data = storage.read_bytes(where, **self.storage_options)
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read image {image_id!r} from {where}: {exc}") from exc

    def image(self, image_id: str) -> Image.Image:
        """The decoded RGB image (a copy; the cached one is never handed out)."""
        cached = self._cache.get(image_id)
        if cached is None:
            cached = self._decode(image_id)
            if self.cache_size > 0:
                self._cache[image_id] = cached
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(image_id)
        return cached.copy()

    def __getitem__(self, index: int) -> tuple[Any, str]:
        r = self.records[index]
        use_trunc = self.official_boxes and r.box_trunc is not None
        image, box = self.image(r.image_id), (r.box_trunc if use_trunc else r.box_xyxy).copy()
        if self.transform is None:
            return (image, box, r.text), r.sample_id
        return self.transform(image, box, r.text), r.sample_id

