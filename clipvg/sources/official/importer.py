"""The official CLIP-VG split files (``{split_root}/{key}/{key}_{split}.pth``) <-> a clipvg
dataset (method doc §1.1-§1.3).

Box conventions:

* in the files, the COCO family (``unc``, ``unc+``, ``gref``, ``gref_umd``) stores
  ``[x, y, w, h]`` (top-left + size, float pixels); ``referit`` and ``flickr`` store
  ``[x1, y1, x2, y2]``;
* the samples table's ``box`` is ``x0, y0, x1, y1`` float32 pixels computed from the *raw*
  floats (``x + w`` in float64, then float32) - no truncation;
* ``box_trunc`` is the box the official loader trains on: every raw coordinate truncated to an
  int first, then ``x2 = int(x) + int(w)`` for xywh (for positive numbers 1 less than
  ``int(x + w)`` when the fractions add up past 1, e.g. x = w = 0.6);
* ``box_raw`` keeps the file's numbers (float64) and ``box_format`` their convention, so an
  export gives back the same numbers.

Loading is done by :mod:`clipvg.sources.official.unpickler` (no code from the file ever runs);
validation and publication by :func:`clipvg.data.validate.ingest`. The export side lives in
:mod:`clipvg.sources.official.export`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from clipvg.data import storage
from clipvg.data.pseudo_sources import MANIFEST_KEY, UNION_SOURCE, manifest_entries
from clipvg.data.validate import CHECK_OPTIONS, check_tables, publish
from clipvg.errors import UserError
from clipvg.sources.official.formats import (  # noqa: F401  (re-exported)
    COCO_FAMILY, IMAGE_FOLDERS, KEYS, PLACEHOLDER, SPLITS, TRAIN_SEPARATE, box_format, check_key,
)
from clipvg.sources.official import target
from clipvg.sources.official.images import check_mode, image_folder, images_table
from clipvg.sources.official.unpickler import UnsafePickleError, load_split_file

__all__ = [
    "COCO_FAMILY", "KEYS", "SPLITS", "IMAGE_FOLDERS", "PLACEHOLDER", "UnsafePickleError",
    "load_split_file", "SplitFile", "find_split_files", "parse_entries", "samples_table",
    "rejected_table", "box_format", "SAMPLES_IMPORT_SCHEMA",
]

MALFORMED = "malformed_entry"

# "1_unc+_train_pseudo_template_0_5.pth": MSA position, dataset, source, threshold ('.'->'_').
_SEPARATE_RE = re.compile(
    r"^(?P<pos>\d+)_(?P<dataset>.+?)_train_pseudo_(?P<source>[A-Za-z][A-Za-z0-9-]*)"
    r"(?:_(?P<thr>\d+(?:_\d+)?))?\.pth$")
_SOURCE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")

BOX4 = pa.list_(pa.float32(), 4)
SAMPLES_IMPORT_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("image_id", pa.string(), nullable=False),
    pa.field("text", pa.binary(), nullable=False),  # UTF-8 validity is the validator's call
    pa.field("box", BOX4, nullable=False),  # x0, y0, x1, y1 from the raw floats
    pa.field("source", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("dataset", pa.string(), nullable=False),
    pa.field("box_raw", pa.list_(pa.float64()), nullable=False),  # as in the file
    pa.field("box_format", pa.string(), nullable=False),  # "xywh" | "xyxy"
    pa.field("box_trunc", BOX4, nullable=True),  # official int box; null if non-finite
    pa.field("official_file", pa.string(), nullable=False),
    pa.field("official_row", pa.int64(), nullable=False),
    pa.field("aux", pa.string(), nullable=True),  # JSON [aux_1, aux_2]; null for flickr
    pa.field("curriculum_position", pa.int32(), nullable=True),  # train_separate only
    pa.field("source_threshold", pa.float32(), nullable=True),  # train_separate only
])
REJECTED_SCHEMA = pa.schema(  # what ingest's quarantine keeps: text as (escaped) string
    [f.with_nullable(True) if f.name != "text" else pa.field("text", pa.string())
     for f in SAMPLES_IMPORT_SCHEMA]
    + [pa.field("reason", pa.string()), pa.field("detail", pa.string()),
       pa.field("input_row", pa.int64())])


# ------------------------------------------------------------------------------ discovery
@dataclass(frozen=True)
class SplitFile:
    """One split file to import and what its name says about its rows."""

    uri: str
    name: str  # the file name, e.g. "unc_val.pth"
    split: str  # split column value: the file's split, train_separate for per-source files
    source: str  # gt | pseudo (or --union-source) | the train_separate source name
    id_prefix: str  # sample_id = f"{id_prefix}/{row:07d}"
    position: int | None = None  # MSA curriculum position (train_separate)
    threshold: float | None = None  # reliability threshold (train_separate)


def _list_files(folder: str, **storage_options: Any) -> list[str]:
    fs, path = storage.filesystem(folder, **storage_options)
    if not fs.isdir(path):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))


def _separate_files(key: str, split_root: str, **so: Any) -> list[SplitFile]:
    """``train_separate/`` files of ``key`` at the split root and in the key folder (a name
    found in both places is taken once, from the key folder)."""
    found: dict[str, SplitFile] = {}
    for folder in (storage.join(split_root, TRAIN_SEPARATE),
                   storage.join(split_root, key, TRAIN_SEPARATE)):
        for name in _list_files(folder, **so):
            m = _SEPARATE_RE.match(name)
            if not m or m["dataset"] != key:
                continue
            thr = float(m["thr"].replace("_", ".", 1)) if m["thr"] else None
            found[name] = SplitFile(storage.join(folder, name), name, TRAIN_SEPARATE,
                                    m["source"], f"{key}/{TRAIN_SEPARATE}-{m['source']}",
                                    int(m["pos"]), thr)
    files = sorted(found.values(), key=lambda f: (f.position, f.name))
    prefixes = [f.id_prefix for f in files]
    # Two files of one source (e.g. two thresholds) would share sample_ids: use the file stem.
    return [f if prefixes.count(f.id_prefix) == 1 else
            SplitFile(f.uri, f.name, f.split, f.source, f"{f.id_prefix}@{f.name[:-4]}",
                      f.position, f.threshold) for f in files]


def find_split_files(key: str, split_root: str, splits: list[str] | None = None, *,
                     union_source: str | None = None,
                     **storage_options: Any) -> tuple[list[SplitFile], list[str]]:
    """The split files of ``key`` under ``split_root`` and notes on what was skipped.

    ``splits``: names from :data:`SPLITS` plus ``"train_separate"``; None = all found.
    ``trainval`` is always skipped (it concatenates train and val). The union file
    ``{key}_train_pseudo.pth`` is split ``train_pseudo``, source ``union_source`` or
    ``pseudo``; ``train_separate/`` files are split ``train_separate``, source = the name in
    the file name. Raises ``FileNotFoundError`` when ``split_root`` is not a folder.
    """
    check_key(key)
    wanted = list(SPLITS) + [TRAIN_SEPARATE] if splits is None else list(splits)
    unknown = [s for s in wanted if s not in SPLITS and s != TRAIN_SEPARATE]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected some of "
                         f"{', '.join(SPLITS + (TRAIN_SEPARATE,))}")
    fs, path = storage.filesystem(split_root, **storage_options)
    if not fs.isdir(path):
        raise FileNotFoundError(f"split root {split_root} is not a folder")
    present = set(_list_files(storage.join(split_root, key), **storage_options))
    files, notes = [], []
    for split in SPLITS:
        name = f"{key}_{split}.pth"
        if split not in wanted or name not in present:
            continue
        if split == "trainval":
            notes.append(f"skipped {name}: trainval is the concatenation of train and val")
            continue
        source = (union_source or UNION_SOURCE) if split == "train_pseudo" else "gt"
        files.append(SplitFile(storage.join(split_root, key, name), name, split, source,
                               f"{key}/{split}"))
    if TRAIN_SEPARATE in wanted:
        files += _separate_files(key, split_root, **storage_options)
    if union_source is not None:
        _check_union_source(union_source, files, key)
    return files, notes


def _check_union_source(name: str, files: list[SplitFile], key: str) -> None:
    """``--union-source NAME`` must name one imported union file and no source imported from
    ``train_separate/`` too (its labels would count twice)."""
    if not _SOURCE_RE.match(name) or name in ("gt", UNION_SOURCE):
        raise UserError(f"--union-source {name!r} is not a source name (letters, digits and "
                        "'-', starting with a letter; not gt or pseudo)")
    if not any(f.split == "train_pseudo" for f in files):
        raise UserError(f"--union-source {name}: no {key}_train_pseudo.pth is imported")
    twice = [f.name for f in files if f.split == TRAIN_SEPARATE and f.source == name]
    if twice:
        raise UserError(f"--union-source {name}: {twice[0]} is source {name!r} too; its labels "
                        "would count twice (import the union or the train_separate files)")


# ------------------------------------------------------------------------------ parsing
class _Malformed(ValueError):
    pass


def _number(v: Any, what: str) -> float:
    if type(v) not in (int, float):  # bool is an int subclass but never a coordinate
        raise _Malformed(f"{what} is {v!r} ({type(v).__name__}), not a number")
    try:
        return float(v)
    except OverflowError:
        raise _Malformed(f"{what} {v} is out of the float range") from None


def _parse_box(raw: Any, fmt: str) -> dict:
    """box (raw floats, no truncation), box_raw, box_trunc (the official int box)."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 4:
        raise _Malformed(f"box {raw!r:.80} is not a sequence of 4 numbers")
    r = [_number(v, f"box coordinate {i}") for i, v in enumerate(raw)]
    if fmt == "xywh":
        box = [r[0], r[1], r[0] + r[2], r[1] + r[3]]
    else:
        box = list(r)
    trunc = None
    if all(math.isfinite(v) for v in r):  # non-finite boxes are the validator's to report
        t = [int(v) for v in r]  # int() truncates toward zero, like numpy's int cast
        trunc = [t[0], t[1], t[0] + t[2], t[1] + t[3]] if fmt == "xywh" else t
        trunc = [float(v) for v in trunc]
    return dict(box=box, box_raw=r, box_format=fmt, box_trunc=trunc)


def _json_aux(aux_1: Any, aux_2: Any) -> str:
    # bytes are not JSON: kept readable (aux fields are never used for training)
    try:
        return json.dumps([aux_1, aux_2],
                          default=lambda b: b.decode("utf-8", "backslashreplace"))
    except RecursionError:  # a hostile or broken file: the entry is rejected, not the import
        raise _Malformed("aux fields nested too deeply to store") from None
    except (TypeError, ValueError, AttributeError) as e:  # other objects, circular references
        raise _Malformed(f"aux fields cannot be stored as JSON ({type(e).__name__}: {e})"[:200]) from None


def _text(v: Any) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8", "surrogatepass")  # lone surrogates survive to the validator
    if isinstance(v, bytes):
        return v
    raise _Malformed(f"expression is {v!r:.80} ({type(v).__name__}), not a string")


def _image_name(v: Any) -> str:
    if not isinstance(v, str):
        raise _Malformed(f"image file name is {v!r:.80} ({type(v).__name__}), not a string")
    # A name is joined to the image folder and to <out>/files/: no path may escape them.
    if not v or v in (".", "..") or any(c in v for c in "/\\\0"):
        raise _Malformed(f"image file name {v!r:.80} is not a plain file name")
    return v


def parse_entry(entry: Any, key: str) -> dict:
    """The sample fields of one entry; raises ``ValueError`` saying what is wrong."""
    n = 3 if key == "flickr" else 5
    if not isinstance(entry, (list, tuple)) or len(entry) != n:
        got = f"{len(entry)} elements" if isinstance(entry, (list, tuple)) else \
            type(entry).__name__
        raise _Malformed(f"expected a {n}-element sequence, got {got}")
    if key == "flickr":  # (image, [x1, y1, x2, y2], phrase)
        image, raw_box, text, aux = entry[0], entry[1], entry[2], None
    else:  # (image, aux_1, box, expression, aux_2)
        image, raw_box, text = entry[0], entry[2], entry[3]
        aux = _json_aux(entry[1], entry[4])
    return dict(image_id=_image_name(image), text=_text(text),
                **_parse_box(raw_box, box_format(key)), aux=aux)


def _partial(entry: Any, key: str) -> dict:
    """Whatever can be read from a malformed entry, for the rejected table."""
    out: dict = {}
    if isinstance(entry, (list, tuple)) and entry:
        if isinstance(entry[0], str):
            out["image_id"] = entry[0]
        text_at = 2 if key == "flickr" else 3
        if len(entry) > text_at and isinstance(entry[text_at], (str, bytes)):
            # the quarantine stores text as string: escape what is not UTF-8
            out["text"] = _text(entry[text_at]).decode("utf-8", "backslashreplace")
    return out


def parse_entries(entries: list, key: str, sf: SplitFile) -> tuple[list[dict], list[dict]]:
    """Rows for the samples table and rows for the rejected table (reason malformed_entry)."""
    common = dict(source=sf.source, split=sf.split, dataset=key, official_file=sf.name,
                  curriculum_position=sf.position, source_threshold=sf.threshold)
    rows, rejected = [], []
    for i, entry in enumerate(entries):
        base = dict(common, sample_id=f"{sf.id_prefix}/{i:07d}", official_row=i)
        try:
            rows.append(dict(base, **parse_entry(entry, key)))
        except _Malformed as e:
            rejected.append(dict(base, **_partial(entry, key), reason=MALFORMED,
                                 detail=f"{sf.name} row {i}: {e}", input_row=i))
    return rows, rejected


def samples_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SAMPLES_IMPORT_SCHEMA)


def rejected_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=REJECTED_SCHEMA)


# ------------------------------------------------------------------------------ report
@dataclass
class ImportReport:
    """What :func:`import_official` read, skipped and what the validator made of it."""

    dataset: str
    files: list[dict] = field(default_factory=list)  # name, uri, split, source, rows, rejected
    notes: list[str] = field(default_factory=list)
    images: int = 0
    validation: Any = None  # clipvg.data.validate.ValidationReport

    def as_dict(self) -> dict:
        v = self.validation
        return dict(dataset=self.dataset, files=self.files, notes=self.notes,
                    images=self.images, validation=v.as_dict() if v is not None else None)


# ------------------------------------------------------------------------------ import
def _read_files(key: str, files: list[SplitFile], so: dict) -> tuple[list, list, list[dict]]:
    rows, rejected, reports = [], [], []
    for sf in files:
        entries = load_split_file(sf.uri, **so)
        ok, bad = parse_entries(entries, key, sf)
        rows += ok
        rejected += bad
        reports.append(dict(name=sf.name, uri=sf.uri, split=sf.split, source=sf.source,
                            rows=len(entries), rejected=len(bad), position=sf.position,
                            threshold=sf.threshold))
    return rows, rejected, reports


def import_official(key: str, split_root: str, image_root: str | None, out: str, *,
                    images: str = "copy", image_dir: str | None = None,
                    splits: list[str] | None = None, union_source: str | None = None,
                    overwrite: bool = False, add: bool = False, progress: bool | None = None,
                    drop_duplicates: bool = False, **options: Any) -> ImportReport:
    """Import the official split files of ``key`` into a clipvg dataset at ``out``.

    Reads every split file found (see :func:`find_split_files`; ``union_source`` names the
    union file's source) with the restricted loader, parses each entry (a malformed one
    becomes a ``rejected`` row, reason ``malformed_entry``), builds the images table
    (``images``: copy / pack / reference, from ``image_dir`` or the key's official folder
    under ``image_root``), validates the rows and publishes ``samples/``, ``images/``,
    ``quarantine/`` and ``manifest.json`` (last; with ``pseudo_sources``, see
    :mod:`clipvg.data.pseudo_sources`).

    An ``out`` that holds a dataset is refused (:class:`UserError`) unless ``overwrite``
    (replace it) or ``add`` (add splits / sources it does not have; see
    :mod:`clipvg.sources.official.target`). Raises :class:`UnsafePickleError` for an unsafe
    file and ``FileNotFoundError`` when no split file is found, before anything is written.

    ``drop_duplicates`` is off: repeated (image, text, box) rows are part of the official
    splits, and dropping them would change the benchmark's sample counts. ``options``: the
    validator's check options (``max_text_tokens``, ``decode_images``, ``threads``) and
    storage options (``endpoint_url``) for every URI involved.
    """
    check_mode(images)
    checks = {k: options.pop(k) for k in list(options) if k in CHECK_OPTIONS}
    so = options
    files, notes = find_split_files(key, split_root, splits, union_source=union_source, **so)
    if not files:
        raise FileNotFoundError(f"no split files of {key!r} under {split_root} (looked for "
                                f"{key}/{key}_<split>.pth and train_separate/)")
    folder = image_folder(key, image_root, image_dir, so)
    prior = target.check_target(out, overwrite=overwrite, add=add, **so)
    if prior is not None:
        target.refuse_conflicts(out, prior, key, images, files)
    rows, rejected, reports = _read_files(key, files, so)
    kept = target.read_kept(out, prior, rows, checks, **so) if prior is not None else None
    if overwrite:  # every refusal is behind us: the old dataset goes
        target.clear(out, **so)
    names = list(dict.fromkeys(r["image_id"] for r in rows))  # first-seen order
    table = target.images_to_check(names, kept, lambda fetch: images_table(
        fetch, folder, out, images, progress=progress, **so))
    checked = check_tables(out, samples_table(rows), table, rejected=rejected_table(rejected),
                           drop_duplicates=drop_duplicates, progress=progress, **checks, **so)
    official = dict(split_root=split_root, image_folder=folder, notes=notes,
                    files=[{k: f[k] for k in _FILE_KEYS} for f in reports])
    report = checked.report  # this import's rows (an --add's manifest sums up every row)
    if kept is not None:
        checked = target.joined(kept, checked)
    manifest = target.manifest(prior, key, images, official)
    manifest[MANIFEST_KEY] = manifest_entries(manifest["official"]["files"], checked.samples)
    publish(out, checked, manifest=manifest, **so)
    return ImportReport(key, reports, notes, len(names), report)


_FILE_KEYS = ("name", "split", "source", "rows", "rejected", "position", "threshold")
__all__ += ["ImportReport", "images_table", "import_official"]
