"""Publish a converted record table into a clipvg dataset: ``<root>/<table>/`` (one Parquet part,
validated against :mod:`clipvg.data.schema`), then ``manifest.json`` with the table added to
``tables`` and a ``records`` entry saying where it came from.

An existing record table (a Parquet folder with parts, or its name in the manifest's ``tables``)
is refused - before anything is read or written - unless ``overwrite``; the new part is
published before the old ones are removed (:func:`clipvg.data.storage.write_table`).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from clipvg.data import storage
from clipvg.data.schema import SPECS, SchemaError, conform
from clipvg.sources.records.common import Images, RecordsError

RECORD_TABLES = ("detections", "triplets", "captions")
MANIFEST_KEY = "records"


def read_manifest(root: str, **storage_options: Any) -> dict:
    uri = storage.join(root, "manifest.json")
    if not storage.exists(uri, **storage_options):
        raise RecordsError(f"{root}: no clipvg dataset there (manifest.json missing); import or "
                           "write the dataset first")
    return storage.read_json(uri, **storage_options)


def check_target(root: str, table: str, *, overwrite: bool, **storage_options: Any) -> dict:
    """The dataset's manifest, after refusing an existing ``table`` unless ``overwrite``."""
    if table not in RECORD_TABLES:
        raise ValueError(f"unknown record table {table!r}")
    manifest = read_manifest(root, **storage_options)
    uri = storage.join(root, table)
    if not overwrite and (table in manifest.get("tables", [])
                          or storage.list_parts(uri, **storage_options)):
        raise RecordsError(f"{uri} already exists; pass --overwrite to replace it (nothing was "
                           "changed)")
    return manifest


def read_images(root: str, **storage_options: Any) -> Images:
    uri = storage.join(root, "images")
    try:
        table = storage.read_table(uri, columns=["image_id", "width", "height"], **storage_options)
    except FileNotFoundError:
        raise RecordsError(f"{uri}: the dataset has no images table") from None
    return Images.from_table(table)


def publish(root: str, table: str, rows: pa.Table, manifest: dict, entry: dict,
            **storage_options: Any) -> str:
    """Write ``rows`` as ``<root>/<table>/`` and record it in the manifest; returns the URI."""
    try:
        data = conform(rows, SPECS[table])
    except SchemaError as e:  # the converters check every row; this is a last guard
        raise RecordsError(" ".join(str(e).split())) from None
    uri = storage.join(root, table)
    storage.write_table(data, uri, **storage_options)
    tables = list(manifest.get("tables", []))
    if table not in tables:
        tables.append(table)
    records = dict(manifest.get(MANIFEST_KEY) or {})
    records[table] = entry
    storage.write_json(dict(manifest, tables=tables, **{MANIFEST_KEY: records}),
                       storage.join(root, "manifest.json"), **storage_options)
    return uri
