"""The checks behind :mod:`clipvg.data.validate`: column types, opening images, per-row
verdicts (see that module's docstring for the checks, their order and the decode tradeoff)."""

from __future__ import annotations

import io
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from clipvg.data import storage
from clipvg.data.schema import EXPR_TYPES, SchemaError

_NOT_FOUND = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


# --------------------------------------------------------------------------------------------
# Column checks (a wrong type is the caller's bug, not a data problem: raise)
# --------------------------------------------------------------------------------------------


def _require(table: pa.Table, name: str, column: str, ok, expected: str) -> None:
    if column not in table.column_names:
        raise SchemaError(f"invalid {name} table: column {column!r}: missing column")
    actual = table.schema.field(column).type
    if not ok(actual):
        raise SchemaError(f"invalid {name} table: column {column!r}: type {actual}, "
                          f"expected {expected}")


def _is_box(t: pa.DataType) -> bool:
    return ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
            and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)))


def check_columns(samples: pa.Table, images: pa.Table) -> None:
    """Raise SchemaError naming the first missing or mistyped column (types only: values,
    nulls included, are what the row checks are for)."""
    string = pa.types.is_string, pa.types.is_large_string
    is_str = lambda t: any(f(t) for f in string)  # noqa: E731
    for col in ("sample_id", "image_id", "source", "split", "dataset"):
        _require(samples, "samples", col, is_str, "string")
    _require(samples, "samples", "text", lambda t: is_str(t) or pa.types.is_binary(t)
             or pa.types.is_large_binary(t), "string or binary")
    _require(samples, "samples", "box", _is_box, "a list of numbers")
    if "expr_type" in samples.column_names:
        _require(samples, "samples", "expr_type", is_str, "string")
    _require(images, "images", "image_id", is_str, "string")
    if "uri" not in images.column_names and "bytes" not in images.column_names:
        raise SchemaError("invalid images table: needs a 'uri' or a 'bytes' column")
    if "uri" in images.column_names:
        _require(images, "images", "uri", is_str, "string")
    if "bytes" in images.column_names:
        _require(images, "images", "bytes", lambda t: pa.types.is_binary(t)
                 or pa.types.is_large_binary(t), "binary")
    for col in ("width", "height"):
        if col in images.column_names:
            _require(images, "images", col, pa.types.is_integer, "an integer type")


def _first_invalid_utf8(column: pa.ChunkedArray) -> tuple[int, bytes] | None:
    """(row, bytes) of the first value of a string column that is not UTF-8, or None. Parquet
    files written by other tools can hold such values; pyarrow only fails when they are read."""
    offset = 0
    for chunk in column.chunks:
        try:
            chunk.validate(full=True)  # checks UTF-8 in C++, without making Python strings
        except pa.ArrowInvalid:
            for i, value in enumerate(chunk.view(pa.binary()).to_pylist()):
                try:
                    if value is not None:
                        value.decode("utf-8")
                except UnicodeDecodeError:
                    return offset + i, value
        offset += len(chunk)
    return None


def utf8_checked(samples: pa.Table, images: pa.Table) -> pa.Table:
    """``samples``, its ``text`` column viewed as binary when a string text is not UTF-8 (each
    such row is then quarantined as ``text_invalid_utf8``, like a binary text). Invalid UTF-8 in
    any other string column of either table raises SchemaError naming table, column and row."""
    for name, table in (("samples", samples), ("images", images)):
        for field_ in table.schema:
            if not (pa.types.is_string(field_.type) or pa.types.is_large_string(field_.type)):
                continue
            bad = _first_invalid_utf8(table.column(field_.name))
            if bad is None:
                continue
            if name == "samples" and field_.name == "text":
                binary = pa.large_binary() if pa.types.is_large_string(field_.type) else pa.binary()
                column = pa.chunked_array([c.view(binary) for c in table.column("text").chunks],
                                          type=binary)
                samples = samples.set_column(samples.column_names.index("text"), "text", column)
                continue
            row, value = bad
            raise SchemaError(f"invalid {name} table: column {field_.name!r}: row {row} is not "
                              f"valid UTF-8 ({value[:60]!r}); a string column must hold UTF-8")
    return samples


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


class ImageOutcome(NamedTuple):
    """Outcome of opening one image: a size, or a reason and a detail."""

    width: int = 0
    height: int = 0
    reason: str | None = None
    detail: str = ""


# PIL names the file object it was given ("<_io.BytesIO object at 0x7f...>"): useless to a user
_FILE_OBJECT = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _decode(f, where: str, decode: bool) -> ImageOutcome:
    try:
        with Image.open(f) as im:
            if decode:
                im.load()  # every pixel: a truncated file fails here, not in training
                if im.mode != "RGB":
                    im.convert("RGB")  # what the reader does; some modes cannot
            return ImageOutcome(*im.size)
    except UnidentifiedImageError:
        return ImageOutcome(reason="image_unreadable",
                            detail=f"cannot decode {where}: not an image format PIL can identify")
    except Exception as exc:  # anything a decoder raises on untrusted bytes means unreadable
        message = _FILE_OBJECT.sub("the file", str(exc)) or type(exc).__name__
        return ImageOutcome(reason="image_unreadable", detail=f"cannot decode {where}: {message}")


def _open_image(image_id: str, rel: str | None, data: bytes | None, root: str, decode: bool,
                storage_options: dict) -> ImageOutcome:
    if data is not None:
        return _decode(io.BytesIO(data), f"the bytes of image {image_id!r}", decode)
    if rel is None:
        return ImageOutcome(reason="missing_image",
                            detail=f"image {image_id!r} has neither uri nor bytes")
    where = storage.resolve(root, rel)
    fs, path = storage.filesystem(where, **storage_options)
    try:
        f = fs.open(path, "rb")
    except _NOT_FOUND:
        return ImageOutcome(reason="missing_image",
                            detail=f"no file at {where} (image {image_id!r})")
    with f:  # header-only mode reads just the first blocks through the open file
        return _decode(io.BytesIO(f.read()) if decode else f, where, decode)


def check_images(images: pa.Table, root: str, decode: bool, threads: int,
                 progress: bool | None, storage_options: dict) -> dict[int, ImageOutcome]:
    """Row index -> outcome, for the first row of each image_id (later repeats are left out).

    Every image of the table is opened, referenced by a sample or not: the images table that
    is published must hold only images that open (pseudo-labels start from unlabelled ones).
    """
    ids = images.column("image_id").to_pylist()
    n = len(ids)
    uris = images.column("uri").to_pylist() if "uri" in images.column_names else [None] * n
    # bytes are fetched row by row in the workers, not copied into one Python list up front
    packed = images.column("bytes") if "bytes" in images.column_names else None
    first: dict[str, int] = {}
    for row, image_id in enumerate(ids):
        if image_id is not None:
            first.setdefault(image_id, row)
    rows = sorted(first.values())
    show = (sys.stderr.isatty() and len(rows) >= 1000) if progress is None else progress

    def one(row: int) -> ImageOutcome:
        data = packed[row].as_py() if packed is not None else None
        return _open_image(ids[row], uris[row], data, root, decode, storage_options)

    with ThreadPoolExecutor(max(1, threads)) as pool, tqdm(
            total=len(rows), disable=not show, unit="img", desc="validate") as bar:
        results = {}
        for row, outcome in zip(rows, pool.map(one, rows)):
            results[row] = outcome
            bar.update(1)
    return results


def completed_images(images: pa.Table,
                     checked: dict[int, ImageOutcome]) -> tuple[pa.Table, int]:
    """The images that opened, width/height set from the files; and how many listed sizes
    disagreed with the files (the decoded size wins)."""
    ok = [row for row, c in sorted(checked.items()) if c.reason is None]
    out = images.take(pa.array(ok, pa.int64()))
    sizes = [(checked[row].width, checked[row].height) for row in ok]
    listed = [out.column(c).to_pylist() if c in out.column_names else [None] * len(ok)
              for c in ("width", "height")]
    corrected = sum(any(a is not None and a != b for a, b in zip(pair, size))
                    for pair, size in zip(zip(*listed), sizes))
    for k, col in enumerate(("width", "height")):
        values = pa.array([size[k] for size in sizes], pa.int32())
        if col in out.column_names:
            out = out.set_column(out.column_names.index(col), col, values)
        else:
            out = out.append_column(col, values)
    return out, corrected


# --------------------------------------------------------------------------------------------
# Samples rows
# --------------------------------------------------------------------------------------------


# Printable ASCII without "&" (html.unescape could expand an entity): CLIP's cleaning (ftfy,
# unescape, whitespace, lower-case) never lengthens such a text, every BPE id covers at least
# one byte, and a non-blank one yields at least one id. So it has between 1 and (non-blank
# characters) tokens, and short ones need no tokenizer (whose open_clip import costs seconds).
_PLAIN = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")


def plainly_fits(text: str, limit: int) -> bool:
    """True when ``text`` (not blank) surely has 1..``limit`` CLIP BPE tokens."""
    return _PLAIN.fullmatch(text) is not None and len("".join(text.split())) <= limit


class TokenCounter:
    """CLIP BPE token counts, cached per text (templated datasets repeat texts). A very long
    text is counted on a prefix first, so a megabyte of junk costs no more than a long caption."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.prefix = max(1000, 40 * limit)  # chars; far more than `limit` tokens ever span
        self.cache: dict[str, tuple[int, bool]] = {}

    def __call__(self, text: str) -> tuple[int, bool]:
        """(token count, exact); not exact = "at least" (the prefix was already too long)."""
        if text not in self.cache:
            from clipvg.data.text import bpe_ids  # open_clip: paid only when texts need it

            n = len(bpe_ids(text[: self.prefix]))
            if len(text) <= self.prefix or n > self.limit:
                self.cache[text] = (n, len(text) <= self.prefix)
            else:
                self.cache[text] = (len(bpe_ids(text)), True)
        return self.cache[text]


def _malformed(row: dict) -> str | None:
    for col in ("sample_id", "image_id", "text", "source", "split", "dataset", "box"):
        if row[col] is None:
            return f"{col} is null"
    box = row["box"]
    if len(box) != 4 or any(v is None for v in box):
        return f"box must be 4 numbers (x0, y0, x1, y1), got {box}"
    if row["expr_type"] is not None and row["expr_type"] not in EXPR_TYPES:
        return f"unknown expr_type {row['expr_type']!r}; expected one of {EXPR_TYPES}"
    return None


def _box_problem(box: list, width: int, height: int) -> tuple[str, str] | None:
    with np.errstate(over="ignore"):  # checked as stored: float32, where 1e39 is inf
        x0, y0, x1, y1 = np.asarray(box, dtype=np.float64).astype(np.float32)
    if not all(np.isfinite(v) for v in (x0, y0, x1, y1)):
        return "box_not_finite", f"box {box} has a non-finite coordinate (as float32)"
    if x1 <= x0 or y1 <= y0:
        return "box_degenerate", f"box {box} has x1 <= x0 or y1 <= y0 (expected x0, y0, x1, y1)"
    if min(x1, width) <= max(x0, 0) or min(y1, height) <= max(y0, 0):
        return "box_outside_image", f"box {box} does not overlap the {width}x{height} image"
    return None


def _decode_text(value: Any) -> tuple[str | None, str | None]:
    """(text, UTF-8 error): binary texts are decoded strictly; on failure the text is kept
    with backslash escapes so the quarantine row shows the bad bytes."""
    if not isinstance(value, bytes):
        return value, None
    try:
        return value.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return value.decode("utf-8", "backslashreplace"), f"invalid UTF-8: {exc}"


def _row_problem(row: dict, text: str | None, utf8_error: str | None,
                 images: dict[str, ImageOutcome], count: TokenCounter) -> tuple[str, str] | None:
    """The first failing per-row check (duplicates aside), or None."""
    detail = _malformed(row)
    if detail:
        return "malformed_entry", detail
    image = images.get(row["image_id"])
    if image is None:
        return "missing_image", f"image_id {row['image_id']!r} is not in the images table"
    if image.reason:
        return image.reason, image.detail
    problem = _box_problem(row["box"], image.width, image.height)
    if problem:
        return problem
    if utf8_error:
        return "text_invalid_utf8", utf8_error
    if not text.strip():
        return "text_empty", f"text {text!r} is empty after stripping whitespace"
    if plainly_fits(text, count.limit):
        return None
    n, exact = count(text)
    if n == 0:
        return "text_empty", f"text {text!r} has no BPE token"
    if n > count.limit:
        return "text_too_long", (f"{'' if exact else 'at least '}{n} BPE tokens, more than "
                                 f"the {count.limit} allowed")
    return None


def row_verdicts(samples: pa.Table, images: dict[str, ImageOutcome], max_tokens: int,
                 drop_duplicates: bool) -> tuple[list, list, list]:
    """Per row: the decoded text, the reason (None = accepted) and the detail."""
    n = samples.num_rows
    cols = {c: samples.column(c).to_pylist() if c in samples.column_names else [None] * n
            for c in ("sample_id", "image_id", "text", "box", "source", "split", "dataset",
                      "expr_type")}
    count = TokenCounter(max_tokens)
    seen_ids: dict[str, int] = {}  # every earlier row's id, whatever its fate
    seen: dict[tuple, int] = {}  # (image, split, text, box) of earlier accepted rows
    texts, reasons, details = [], [], []
    for i in range(n):
        row = {c: v[i] for c, v in cols.items()}
        text, utf8_error = _decode_text(row["text"])
        problem = _row_problem(row, text, utf8_error, images, count)
        sid = row["sample_id"]
        if problem is None and sid in seen_ids:
            problem = ("duplicate_sample_id",
                       f"sample_id {sid!r} is already used by row {seen_ids[sid]}")
        if sid is not None:
            seen_ids.setdefault(sid, i)
        if problem is None and drop_duplicates:
            key = (row["image_id"], row["split"], text,
                   tuple(float(np.float32(v)) for v in row["box"]))
            if key in seen:
                problem = "duplicate_sample", f"same image, split, text and box as row {seen[key]}"
            else:
                seen[key] = i
        texts.append(text)
        reasons.append(problem[0] if problem else None)
        details.append(problem[1] if problem else None)
    return texts, reasons, details
