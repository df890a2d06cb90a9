"""Parquet schemas of the dataset tables, and a validator that names the bad column and row.

A dataset at a URI is a folder of tables (see ``docs/architecture.md``):

* **samples** - one row per (image, expression, box): ``sample_id``, ``image_id``, ``text``,
  ``box`` (x0, y0, x1, y1 in pixels of the original image), ``source`` (gt, template, relation,
  caption, ...), ``split``, ``dataset``; optional ``expr_type`` (the synthetic world's
  attribute / spatial / relational label).
* **images** - ``image_id``, ``uri`` (relative to the dataset root, e.g. ``files/x.png``) and/or
  ``bytes`` (the encoded file), ``width``, ``height``. Either of ``uri`` / ``bytes`` may be
  absent as a column; each row needs at least one of them.
* **quarantine** - rejected samples rows (any column may be null) with ``reason``, ``detail``
  and ``input_row``; written by :mod:`clipvg.data.validate`.
* **detections** - object-detector output the pseudo-label generators start from:
  ``image_id``, ``det_id``, ``box``, ``label``, ``color`` (nullable), ``score``. A real
  detector maps onto it with ``label`` = the class name and ``color`` = the attribute with the
  highest confidence if that confidence is > 0.3, else null (the synthetic world's attribute
  is a colour, hence the name).
* **triplets** - scene-graph output (e.g. RelTR): ``image_id``, ``triplet_id``, ``subject``,
  ``subject_box``, ``predicate``, ``object``, ``object_box``, ``subject_score``,
  ``predicate_score``, ``object_score`` (each the best class probability, in [0, 1]).
* **captions** - image-captioner output: ``image_id``, ``caption_id``, ``caption``, ``score``.

All boxes are x0, y0, x1, y1 float32 pixels of the original image (see ``docs/pseudo.md``).

Extra columns are allowed everywhere (e.g. ``split`` in the images table), so later stages can
carry their own bookkeeping without a schema change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

BOX_TYPE = pa.list_(pa.float32(), 4)  # x0, y0, x1, y1 in original pixels

SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("box", BOX_TYPE, nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("expr_type", pa.string(), nullable=True),  # optional column
    ]
)

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=True),
        pa.field("bytes", pa.binary(), nullable=True),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
    ]
)

DETECTIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("det_id", pa.string(), nullable=False),
        pa.field("box", BOX_TYPE, nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("color", pa.string(), nullable=True),
        pa.field("score", pa.float32(), nullable=False),
    ]
)

TRIPLETS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("triplet_id", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        pa.field("subject_box", BOX_TYPE, nullable=False),
        pa.field("predicate", pa.string(), nullable=False),
        pa.field("object", pa.string(), nullable=False),
        pa.field("object_box", BOX_TYPE, nullable=False),
        pa.field("subject_score", pa.float32(), nullable=False),
        pa.field("predicate_score", pa.float32(), nullable=False),
        pa.field("object_score", pa.float32(), nullable=False),
    ]
)

CAPTIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("caption_id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
    ]
)

EXPR_TYPES = ("attribute", "spatial", "relational")


class SchemaError(ValueError):
    """A table does not match its schema; the message names the table, column and row."""


@dataclass(frozen=True)
class TableSpec:
    """A schema plus what the type system cannot say: optional columns, keys, row rules."""

    name: str
    schema: pa.Schema
    optional: frozenset[str] = frozenset()  # columns that may be absent
    unique: str | None = None  # column whose values must be unique
    # row rules: (table) -> list of (row, column, message)
    checks: tuple[Callable[[pa.Table], list[tuple[int, str, str]]], ...] = field(default=())


# --------------------------------------------------------------------------------------------
# Row rules
# --------------------------------------------------------------------------------------------


def _box_problems(table: pa.Table, column: str = "box") -> list[tuple[int, str, str]]:
    """Boxes must be finite with x0 <= x1 and y0 <= y1 (degenerate boxes are the data's call)."""
    problems = []
    for row, box in enumerate(table.column(column).to_pylist()):
        if box is None:
            continue  # reported by the null check
        if any(v is None or not math.isfinite(v) for v in box):
            problems.append((row, column, f"non-finite coordinate in {box}"))
        elif box[2] < box[0] or box[3] < box[1]:
            problems.append((row, column, f"x1 < x0 or y1 < y0 in {box} (expected x0,y0,x1,y1)"))
    return problems


def _image_problems(table: pa.Table) -> list[tuple[int, str, str]]:
    """Every image needs a file (``uri``) or inline ``bytes``, and a positive size."""
    problems = []
    n = table.num_rows
    no_uri, no_bytes = (
        table.column(c).is_null().to_pylist() if c in table.column_names else [True] * n
        for c in ("uri", "bytes")
    )
    for row, (a, b) in enumerate(zip(no_uri, no_bytes)):
        if a and b:
            problems.append((row, "uri", "neither uri nor bytes is set"))
    for col in ("width", "height"):
        for row, v in enumerate(table.column(col).to_pylist()):
            if v is not None and v <= 0:
                problems.append((row, col, f"must be > 0, got {v}"))
    return problems


def _expr_type_problems(table: pa.Table) -> list[tuple[int, str, str]]:
    if "expr_type" not in table.column_names:
        return []
    values = table.column("expr_type").to_pylist()
    return [
        (row, "expr_type", f"unknown expression type {v!r}; expected one of {EXPR_TYPES}")
        for row, v in enumerate(values)
        if v is not None and v not in EXPR_TYPES
    ]


def _score_problems(table: pa.Table, column: str = "score") -> list[tuple[int, str, str]]:
    """Scores (probabilities) must lie in [0, 1]."""
    return [
        (row, column, f"must be in [0, 1], got {v}")
        for row, v in enumerate(table.column(column).to_pylist())
        if v is not None and not 0.0 <= v <= 1.0
    ]


def _triplet_problems(table: pa.Table) -> list[tuple[int, str, str]]:
    """Both boxes well formed, the three scores in [0, 1]."""
    problems = _box_problems(table, "subject_box") + _box_problems(table, "object_box")
    for column in ("subject_score", "predicate_score", "object_score"):
        problems += _score_problems(table, column)
    return problems


SAMPLES = TableSpec(
    "samples",
    SAMPLES_SCHEMA,
    optional=frozenset({"expr_type"}),
    unique="sample_id",
    checks=(_box_problems, _expr_type_problems),
)
IMAGES = TableSpec(  # one of uri / bytes may be left out as a column
    "images", IMAGES_SCHEMA, optional=frozenset({"uri", "bytes"}), unique="image_id",
    checks=(_image_problems,),
)
DETECTIONS = TableSpec(
    "detections", DETECTIONS_SCHEMA, unique="det_id", checks=(_box_problems, _score_problems)
)

# Rejected sample rows (clipvg.data.validate): the samples columns, all nullable (a rejected row
# may lack any of them), the box as a variable-length float64 list (it may hold 3 values, NaN or
# inf: whatever was rejected, kept as it came), plus why it was rejected and where it came from.
QUARANTINE_REASONS = (
    "malformed_entry", "missing_image", "image_unreadable", "box_not_finite", "box_degenerate",
    "box_outside_image", "text_empty", "text_invalid_utf8", "text_too_long",
    "duplicate_sample_id", "duplicate_sample",
)
QUARANTINE_BOX_TYPE = pa.list_(pa.float64())
QUARANTINE_SCHEMA = pa.schema(
    [pa.field(f.name, QUARANTINE_BOX_TYPE if f.name == "box" else f.type, nullable=True)
     for f in SAMPLES_SCHEMA]
    + [
        pa.field("reason", pa.string(), nullable=False),  # one of QUARANTINE_REASONS
        pa.field("detail", pa.string(), nullable=False),  # human message: file, value, count
        pa.field("input_row", pa.int64(), nullable=False),  # row index in the writer's input
    ]
)


def _reason_problems(table: pa.Table) -> list[tuple[int, str, str]]:
    return [
        (row, "reason", f"unknown reason {v!r}; expected one of {QUARANTINE_REASONS}")
        for row, v in enumerate(table.column("reason").to_pylist())
        if v is not None and v not in QUARANTINE_REASONS
    ]


QUARANTINE = TableSpec(
    "quarantine", QUARANTINE_SCHEMA, optional=frozenset({"expr_type"}), checks=(_reason_problems,)
)
TRIPLETS = TableSpec(
    "triplets", TRIPLETS_SCHEMA, unique="triplet_id", checks=(_triplet_problems,)
)
CAPTIONS = TableSpec("captions", CAPTIONS_SCHEMA, unique="caption_id", checks=(_score_problems,))
SPECS = {
    spec.name: spec
    for spec in (SAMPLES, IMAGES, DETECTIONS, TRIPLETS, CAPTIONS, QUARANTINE)
}

# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

_STRING_TYPES = (pa.string(), pa.large_string(), pa.string_view())
_BINARY_TYPES = (pa.binary(), pa.large_binary(), pa.binary_view())


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Equal types, treating the string/binary variants Arrow engines produce as equivalent."""
    if expected in _STRING_TYPES:
        return actual in _STRING_TYPES
    if expected in _BINARY_TYPES:
        return actual in _BINARY_TYPES
    return actual == expected  # list field names ("item" vs "element") are ignored by Arrow


def table_problems(table: pa.Table, spec: TableSpec | str) -> list[tuple[int | None, str, str]]:
    """All problems of ``table`` as ``(row or None, column, message)``; empty when valid.

    Column-level problems (missing column, wrong type) have ``row=None`` and stop the row
    checks, since row rules assume the types are right.
    """
    spec = SPECS[spec] if isinstance(spec, str) else spec
    problems: list[tuple[int | None, str, str]] = []
    for f in spec.schema:
        if f.name not in table.column_names:
            if f.name not in spec.optional:
                problems.append((None, f.name, "missing column"))
            continue
        actual = table.schema.field(f.name).type
        if not _type_ok(actual, f.type):
            problems.append((None, f.name, f"type {actual}, expected {f.type}"))
    if problems:
        return problems
    for f in spec.schema:
        if f.name in table.column_names and not f.nullable:
            col = table.column(f.name)
            if col.null_count:
                rows = pc.indices_nonzero(col.is_null()).to_pylist()[:5]
                problems += [(r, f.name, "null in a non-nullable column") for r in rows]
    if spec.unique and table.num_rows:
        col = table.column(spec.unique)
        if pc.count_distinct(col).as_py() != table.num_rows:
            seen: dict = {}
            for row, v in enumerate(col.to_pylist()):
                if v in seen:
                    problems.append((row, spec.unique, f"duplicate {v!r} (first at row {seen[v]})"))
                    break
                seen[v] = row
    for check in spec.checks:
        problems += check(table)
    return problems


def validate_table(table: pa.Table, spec: TableSpec | str, *, where: str = "") -> pa.Table:
    """Raise :class:`SchemaError` listing the first problems of ``table``; return it if valid.

    ``where`` (e.g. the table's URI) is put in the message so the user knows which file to fix.
    """
    spec = SPECS[spec] if isinstance(spec, str) else spec
    problems = table_problems(table, spec)
    if problems:
        label = f"{spec.name} table" + (f" at {where}" if where else "")
        lines = [
            f"  column {col!r}" + (f", row {row}" if row is not None else "") + f": {msg}"
            for row, col, msg in problems[:10]
        ]
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise SchemaError(f"invalid {label}:\n" + "\n".join(lines) + more)
    return table


def conform(table: pa.Table, spec: TableSpec | str) -> pa.Table:
    """Cast the schema's columns to their canonical types (e.g. list<double> boxes -> 4 x
    float32, large_string -> string), keeping extra columns after them; then validate.

    Useful for tables built by other tools (pandas, Ray Data) before writing them.
    """
    spec = SPECS[spec] if isinstance(spec, str) else spec
    columns, names = [], []
    for f in spec.schema:
        if f.name not in table.column_names:
            continue  # missing columns are reported by validate_table
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(
                    f"invalid {spec.name} table: column {f.name!r}: cannot cast {col.type} "
                    f"to {f.type}: {exc}"
                ) from exc
        columns.append(col)
        names.append(f.name)
    for name in table.column_names:
        if name not in names:
            columns.append(table.column(name))
            names.append(name)
    return validate_table(pa.Table.from_arrays(columns, names=names), spec)


def empty_table(spec: TableSpec | str) -> pa.Table:
    """A zero-row table with the spec's full schema (optional columns included)."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    return spec.schema.empty_table()
