"""The dataset an import writes to: refused when something is there, replaced (``--overwrite``)
or added to (``--add``).

``--add`` keeps the published dataset's rows as they are (accepted samples, images, quarantine:
already validated) and adds the new files' rows, checked alone; the combined tables are
published the way :func:`clipvg.data.validate.publish` always does (manifest.json removed
first, written last), so a reader sees the old dataset, the combined one, or - after a crash
in between - no dataset, never a half-written one that looks complete. Everything that can
refuse an ``--add`` (dataset key, images mode, a file / (split, source) / pseudo-label source
already there, sample ids) is checked before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc

from clipvg import __version__
from clipvg.data import storage
from clipvg.data.pseudo_sources import MANIFEST_KEY, SPLITS as PSEUDO_SPLITS
from clipvg.data.schema import QUARANTINE_REASONS
from clipvg.data.validate import Checked, ValidationReport
from clipvg.errors import UserError

# What a dataset root holds (docs/data.md); any of them makes --out "not empty"
LAYOUT = ("manifest.json", "samples", "images", "quarantine", "files")


def found(out: str, **storage_options: Any) -> list[str]:
    """The dataset entries (:data:`LAYOUT`) there are at ``out``."""
    return [name for name in LAYOUT
            if storage.exists(storage.join(out, name), **storage_options)]


def check_target(out: str, *, overwrite: bool, add: bool, **storage_options: Any) -> dict | None:
    """Refuse an ``out`` that holds a dataset (or part of one) unless ``overwrite`` or
    ``add``; -> the manifest of the dataset to add to (``add``), else None."""
    if overwrite and add:
        raise UserError("give --overwrite (replace the dataset) or --add (add to it), not both")
    there = found(out, **storage_options)
    if not there:
        if add:
            raise UserError(f"--add: {out} holds no dataset to add to")
        return None
    if not (overwrite or add):
        raise UserError(f"{out} already holds a dataset ({', '.join(there)}); add splits or "
                        "sources to it with --add, replace it with --overwrite, or choose "
                        "another --out")
    if not add:
        return None
    if "manifest.json" not in there:
        raise UserError(f"--add: {out} holds no complete dataset (no manifest.json: an import "
                        "that did not finish?); replace it with --overwrite")
    return storage.read_json(storage.join(out, "manifest.json"), **storage_options)


def refuse_conflicts(out: str, manifest: dict, key: str, images: str, files: list) -> None:
    """``--add`` only adds what is not there: the same dataset key and images mode, no file,
    (split, source) or pseudo-label source the dataset has already."""
    if manifest.get("dataset") != key:
        raise UserError(f"--add: {out} holds dataset {manifest.get('dataset')!r}, not {key!r}")
    if manifest.get("images_mode") != images:
        raise UserError(f"--add: {out} was imported with --images {manifest.get('images_mode')}"
                        f", not {images}")
    old = (manifest.get("official") or {}).get("files") or []
    names = {f["name"] for f in old}
    pairs = {(f["split"], f["source"]) for f in old}
    sources = set(manifest.get("pseudo_sources") or {})
    for f in files:
        if f.name in names:
            raise UserError(f"--add: {f.name} is in {out} already")
        if (f.split, f.source) in pairs:
            raise UserError(f"--add: {out} has split {f.split} (source {f.source}) already "
                            f"({f.name}); choose the others with --splits")
        if f.split in PSEUDO_SPLITS and f.source in sources:
            raise UserError(f"--add: {out} has pseudo-label source {f.source!r} already; "
                            f"{f.name} would count it twice")


def clear(out: str, **storage_options: Any) -> None:
    """``--overwrite``: remove the old dataset (manifest first, then its tables and files)."""
    uri = storage.join(out, "manifest.json")
    manifest = (storage.read_json(uri, **storage_options)
                if storage.exists(uri, **storage_options) else {})
    storage.remove(uri, **storage_options)
    for name in dict.fromkeys([*LAYOUT[1:], *(manifest.get("tables") or [])]):
        storage.remove_tree(storage.join(out, name), **storage_options)


def manifest(prior: dict | None, key: str, images: str, official: dict) -> dict:
    """The new dataset's manifest (without what publish derives from the tables), or the
    manifest of the dataset added to with the new files merged into ``official``."""
    if prior is None:
        return dict(kind="clipvg-dataset", dataset=key, created_by=f"clipvg {__version__}",
                    official=official, images_mode=images)
    out = {k: v for k, v in prior.items() if k not in _DERIVED}
    out["official"] = merged_official(prior.get("official") or {}, official)
    out["added_by"] = f"clipvg {__version__}"
    return out


# derived from the tables by publish (counts, tables, validation) or by the importer
_DERIVED = ("validation", "validation_options", "counts", "tables", MANIFEST_KEY)


# ------------------------------------------------------------------------------ --add
@dataclass
class Kept:
    """The published tables of the dataset an ``--add`` adds to."""

    samples: pa.Table
    images: pa.Table
    quarantine: pa.Table
    manifest: dict

    def image_rows(self, names: list[str]) -> pa.Table:
        """The images rows of ``names`` the dataset has (new rows get checked against them)."""
        ids = pa.array(names, pa.string())
        return self.images.filter(pc.is_in(self.images.column("image_id"), value_set=ids))


def read_kept(out: str, prior: dict, rows: list[dict], checks: dict,
              **storage_options: Any) -> Kept:
    """The tables of the dataset at ``out``; refuses new ``rows`` whose sample ids it has
    (e.g. the same union file under another source). ``checks`` gets the dataset's text
    length policy unless given: new rows are accepted under the same rules as the old."""
    at = lambda name: storage.join(out, name)  # noqa: E731
    kept = Kept(*(storage.read_table(at(t), **storage_options)
                  for t in ("samples", "images", "quarantine")), prior)
    old = set(kept.samples.column("sample_id").to_pylist())
    old.update(kept.quarantine.column("sample_id").to_pylist())
    clash = [r["sample_id"] for r in rows if r["sample_id"] in old]
    if clash:
        raise UserError(f"--add: {len(clash)} sample id(s) are in {out} already "
                        f"(first: {clash[0]})")
    policy = prior.get("validation_options") or {}
    if "max_text_tokens" in policy:
        checks.setdefault("max_text_tokens", policy["max_text_tokens"])
    return kept


def images_to_check(names: list[str], kept: Kept | None,
                    fetch: Callable[[list[str]], pa.Table]) -> pa.Table:
    """The images rows new samples are checked against: ``fetch(names)`` for a new dataset;
    for ``--add`` the dataset's own rows for the images it has (not fetched or copied
    again) and fetched rows for the others."""
    if kept is None:
        return fetch(names)
    have = kept.image_rows(names)
    known = set(have.column("image_id").to_pylist())
    fresh = fetch([n for n in names if n not in known])
    return pa.concat_tables([have, fresh], promote_options="permissive")


def joined(kept: Kept, new: Checked) -> Checked:
    """The kept tables plus the new checked rows (new images only where not kept)."""
    known = pa.array(kept.images.column("image_id").to_pylist(), pa.string())
    fresh = new.images.filter(pc.invert(pc.is_in(new.images.column("image_id"),
                                                 value_set=known)))
    report = summed(ValidationReport(**(kept.manifest.get("validation") or _EMPTY)), new.report)
    return Checked(_concat(kept.samples, new.samples), _concat(kept.images, fresh),
                   _concat(kept.quarantine, new.quarantine), report, new.policy)


def _concat(a: pa.Table, b: pa.Table) -> pa.Table:
    t = pa.concat_tables([a, b], promote_options="permissive")
    # a column one side lacks is null there: its field must allow that, or the Parquet
    # write fails - after publish removed the manifest
    return t.cast(pa.schema([f.with_nullable(True) if t.column(f.name).null_count else f
                             for f in t.schema]))


_EMPTY = dict(input_rows=0, accepted=0, quarantined=0, reasons={})


def summed(a: ValidationReport, b: ValidationReport) -> ValidationReport:
    """One report for the dataset's rows after an ``--add``: every count added up."""
    reasons = {r: a.reasons.get(r, 0) + b.reasons.get(r, 0) for r in QUARANTINE_REASONS
               if r in a.reasons or r in b.reasons}
    n = ("input_rows", "accepted", "quarantined", "rejected", "images_checked",
         "images_dropped", "sizes_corrected")
    return ValidationReport(**{k: getattr(a, k) + getattr(b, k) for k in n}, reasons=reasons)


def merged_official(old: dict, new: dict) -> dict:
    """``manifest["official"]`` after an ``--add``: the first import's roots, every file,
    every note, and where each later import read from."""
    added = [*old.get("added", []), {k: new[k] for k in ("split_root", "image_folder")}]
    return dict(old, files=old.get("files", []) + new["files"],
                notes=old.get("notes", []) + new["notes"], added=added)
