"""The images table of an import: one row per image file name the split files use, its bytes
copied to ``<out>/files/`` (``copy``), packed into the table (``pack``) or the original file
referenced (``reference``). Width and height are left to the validator, which measures them."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
from tqdm import tqdm

from clipvg.data import storage
from clipvg.sources.official.formats import IMAGE_FOLDERS

MODES = ("copy", "pack", "reference")
IMAGES_SCHEMA = pa.schema([("image_id", pa.string()), ("uri", pa.string()),
                           ("bytes", pa.binary()), ("width", pa.int32()), ("height", pa.int32())])


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"images must be copy, pack or reference, got {mode!r}")


def image_folder(key: str, image_root: str | None, image_dir: str | None, so: dict) -> str:
    """Where the key's images are; local folders become absolute (``reference`` URIs). A
    folder that does not exist is an error: it would quarantine every sample as missing."""
    if image_dir is None and image_root is None:
        raise ValueError("give image_root (official layout) or image_dir")
    folder = image_dir if image_dir is not None else storage.join(image_root, IMAGE_FOLDERS[key])
    folder = folder if "://" in folder else os.path.abspath(folder)
    fs, path = storage.filesystem(folder, **so)
    if not fs.isdir(path):
        raise FileNotFoundError(f"image folder {folder} does not exist")
    return folder


def _fetch(name: str, folder: str, out: str, mode: str, so: dict) -> dict:
    """One images row. A missing file is left for the validator (``missing_image``): the row
    then names the original's URI (``copy`` and ``pack`` alike), so the quarantine reason points
    at the file the user has to find, not at the copy that was never made."""
    src = storage.join(folder, name)
    if mode == "reference":
        return dict(image_id=name, uri=src, bytes=None)
    try:
        data = storage.read_bytes(src, **so)
    except FileNotFoundError:
        data = None
    if mode == "pack":
        return dict(image_id=name, uri=None if data is not None else src, bytes=data)
    if data is None:
        return dict(image_id=name, uri=src, bytes=None)
    storage.write_bytes(data, storage.join(out, "files", name), **so)
    return dict(image_id=name, uri=f"files/{name}", bytes=None)


def images_table(names: list[str], folder: str, out: str, mode: str, *,
                 progress: bool | None = None, **storage_options: Any) -> pa.Table:
    """One row per image file name (width/height null: the validator measures them).

    ``copy`` copies files on a few threads (object stores are latency bound), ``pack`` reads
    them into the ``bytes`` column (all in memory: for small sets), ``reference`` points
    ``uri`` at the original file.
    """
    check_mode(mode)
    show = sys.stderr.isatty() and len(names) >= 1000 if progress is None else progress
    rows = []
    with ThreadPoolExecutor(8) as pool, tqdm(total=len(names), disable=not show, unit="img",
                                             desc=f"images ({mode})") as bar:
        for row in pool.map(lambda n: _fetch(n, folder, out, mode, storage_options), names):
            rows.append(row)
            bar.update(1)
    return pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)
