"""Row-level validation of grounding samples, the quarantine table, and :func:`ingest`.

Every dataset writer (the synthetic world, the official-dataset importer, ...) hands its
tables to :func:`ingest`, which checks each samples row and publishes the dataset: accepted
rows to ``samples/``, rejected ones with a reason to ``quarantine/`` (always written, possibly
empty), the images that decoded to ``images/``, extra tables, and ``manifest.json`` last.
:func:`validate_dataset` re-checks a published dataset in place (``clipvg validate URI``).

Checks per samples row, in this order; the first failing one is the row's reason:

1. ``malformed_entry`` - null sample_id / image_id / text / source / split / dataset / box, a
   box that is not 4 numbers, an ``expr_type`` outside ``EXPR_TYPES``;
2. ``missing_image`` (image_id not in the images table, or no file at its uri) or
   ``image_unreadable`` (the image does not decode; the exception text is the detail);
3. ``box_not_finite``, ``box_degenerate`` (x1 <= x0 or y1 <= y0), ``box_outside_image`` (zero
   area once clipped to the image; a box partly outside is accepted unchanged). Boxes are
   checked as the float32 values that are stored, so 1e39 is inf;
4. ``text_invalid_utf8`` (a ``binary`` text column is decoded strictly, and so is a ``string``
   one that holds invalid UTF-8; in any other string column that is a SchemaError), ``text_empty`` (nothing
   after strip, or no BPE token), ``text_too_long`` (more than ``max_text_tokens`` CLIP BPE
   tokens; 75 = what fits between SOT and EOT in CLIP's context of 77);
5. ``duplicate_sample_id`` (an id used by any earlier row), ``duplicate_sample`` (same image,
   split, text and box as an earlier *accepted* row; only with ``drop_duplicates``).

Images: each image of the images table is opened once (thread pool). ``decode_images=True``
decodes all pixels (truncated files fail) and reads the whole file; ``decode_images=False``
reads only the header (size): many times faster on big images or object storage, but a
corrupt or truncated pixel stream passes and fails later, in training. Storage errors other
than "not found" abort the run instead of quarantining: a network hiccup must not silently
drop good rows. (A process that sets PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` lets truncated
files pass the full decode too.)

Texts: printable-ASCII texts short enough to surely fit are accepted without the tokenizer
(see ``validate_checks.plainly_fits``), so most datasets never import open_clip here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from clipvg.data import storage
from clipvg.data.schema import (
    BOX_TYPE, QUARANTINE, QUARANTINE_REASONS, SAMPLES, SPECS, SchemaError, conform,
    validate_table,
)
from clipvg.data.validate_checks import (
    check_columns, check_images, completed_images, row_verdicts, utf8_checked,
)

__all__ = ["QUARANTINE_REASONS", "ValidationReport", "DatasetNotFoundError", "Checked",
           "check_samples", "check_tables", "ingest", "publish", "validate_dataset"]

CHECK_OPTIONS = ("max_text_tokens", "decode_images", "drop_duplicates", "threads", "progress")
RESERVED = ("samples", "images", "quarantine", "files", "manifest.json")
N_EXAMPLES = 10


class DatasetNotFoundError(FileNotFoundError):
    """No complete dataset (manifest.json) at a URI."""


@dataclass
class ValidationReport:
    """Counts of one validation; ``accepted + quarantined == input_rows`` always."""

    input_rows: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]  # reason code -> count (only non-zero), in check order
    rejected: int = 0  # quarantined rows the writer rejected itself (ingest's `rejected`)
    images_checked: int = 0
    images_dropped: int = 0  # listed images that are missing / unreadable / repeated
    sizes_corrected: int = 0  # listed width/height that disagreed with the decoded image
    # The first quarantined rows (input_row, sample_id, reason, detail), for messages; not
    # part of as_dict, so manifests stay small.
    examples: list[dict] = field(default_factory=list, repr=False, compare=False)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("examples")
        return out

    def summary(self) -> str:
        """e.g. ``accepted 120 of 125; quarantined 5: missing_image 2, text_too_long 3``."""
        line = f"accepted {self.accepted} of {self.input_rows}; quarantined {self.quarantined}"
        if self.reasons:
            line += ": " + ", ".join(f"{k} {v}" for k, v in self.reasons.items())
        if self.rejected:
            line += f" ({self.rejected} rejected by the writer)"
        lines = [line]
        if self.images_checked:
            lines.append(f"images: {self.images_checked} checked, {self.images_dropped} missing "
                         f"or unreadable, {self.sizes_corrected} sizes corrected")
        return "\n".join(lines)


def _reason_counts(reasons: list[str]) -> dict[str, int]:
    return {r: reasons.count(r) for r in QUARANTINE_REASONS if r in reasons}


# --------------------------------------------------------------------------------------------
# Output tables
# --------------------------------------------------------------------------------------------


def _accepted_table(samples: pa.Table, rows: list[int], texts: list) -> pa.Table:
    """The accepted rows: text as string, box as 4 x float32; every other column unchanged."""
    out = samples.take(pa.array(rows, pa.int64()))
    names = out.column_names
    out = out.set_column(names.index("text"), "text",
                         pa.array([texts[i] for i in rows], pa.string()))
    values = pc.list_flatten(out.column("box").combine_chunks()).cast(pa.float32(), safe=False)
    box = pa.FixedSizeListArray.from_arrays(values, type=BOX_TYPE)
    return out.set_column(names.index("box"), "box", box)


def _conform_quarantine(table: pa.Table, where: str = "") -> pa.Table:
    """Quarantine layout: the samples columns (nullable, box as list<float64>), then extra
    columns, then reason / detail / input_row; validated. Parts written at different times
    then share one schema."""
    core = [f for f in QUARANTINE.schema if f.name not in ("reason", "detail", "input_row")]
    tail = [QUARANTINE.schema.field(c) for c in ("reason", "detail", "input_row")]
    for f in tail:
        if f.name not in table.column_names:
            raise SchemaError(f"invalid quarantine table {where}: column {f.name!r}: missing")
    columns, fields = [], []
    for f in core + [table.schema.field(c) for c in table.column_names
                     if c not in QUARANTINE.schema.names] + tail:
        if f.name in table.column_names:
            col = table.column(f.name)
            columns.append(col.cast(f.type) if col.type != f.type else col)
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
        fields.append(pa.field(f.name, f.type))
    return validate_table(pa.Table.from_arrays(columns, schema=pa.schema(fields)), QUARANTINE,
                          where=where)


def _quarantine_table(samples: pa.Table, rows: list[int], texts: list, reasons: list,
                      details: list) -> pa.Table:
    out = samples.take(pa.array(rows, pa.int64()))
    out = out.set_column(out.column_names.index("text"), "text",
                         pa.array([texts[i] for i in rows], pa.string()))
    out = out.append_column("reason", pa.array([reasons[i] for i in rows], pa.string()))
    out = out.append_column("detail", pa.array([details[i] for i in rows], pa.string()))
    out = out.append_column("input_row", pa.array(rows, pa.int64()))
    return _conform_quarantine(out)


def _examples(quarantine: pa.Table) -> list[dict]:
    head = quarantine.slice(0, N_EXAMPLES).select(["input_row", "sample_id", "reason", "detail"])
    return head.to_pylist()


def _check_invariant(report: ValidationReport) -> None:
    """Never lose a row: raised (not `assert`ed, which -O would strip) on a bug here."""
    if report.accepted + report.quarantined != report.input_rows or sum(
            report.reasons.values()) != report.quarantined:
        raise AssertionError(f"validation lost rows: {report.as_dict()}")


def check_samples(samples: pa.Table, images: pa.Table, root: str, *, max_text_tokens: int = 75,
                  decode_images: bool = True, drop_duplicates: bool = True, threads: int = 8,
                  progress: bool | None = None, **storage_options
                  ) -> tuple[pa.Table, pa.Table, pa.Table, ValidationReport]:
    """-> (accepted samples, quarantine rows, images table completed, report).

    ``root`` is the dataset root that relative image URIs are resolved against. Accepted
    samples keep every input column (text as string, box as 4 x float32); the images table
    keeps the images that opened, with width/height from the files. See the module docstring
    for the checks and their order.
    """
    check_columns(samples, images)
    samples = utf8_checked(samples, images)
    checked = check_images(images, root, decode_images, threads, progress, storage_options)
    ids = images.column("image_id").to_pylist()
    by_id = {ids[row]: outcome for row, outcome in checked.items()}
    texts, reasons, details = row_verdicts(samples, by_id, max_text_tokens, drop_duplicates)
    ok = [i for i, r in enumerate(reasons) if r is None]
    bad = [i for i, r in enumerate(reasons) if r is not None]
    quarantine = _quarantine_table(samples, bad, texts, reasons, details)
    images_out, corrected = completed_images(images, checked)
    report = ValidationReport(
        samples.num_rows, len(ok), len(bad), _reason_counts([reasons[i] for i in bad]),
        images_checked=len(checked), images_dropped=images.num_rows - images_out.num_rows,
        sizes_corrected=corrected, examples=_examples(quarantine))
    _check_invariant(report)
    return _accepted_table(samples, ok, texts), quarantine, images_out, report


# --------------------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------------------


def _split_options(options: dict) -> tuple[dict, dict]:
    """(check_samples options, storage options) from one keyword dict."""
    check = {k: v for k, v in options.items() if k in CHECK_OPTIONS}
    return check, {k: v for k, v in options.items() if k not in CHECK_OPTIONS}


def _add_rejected(quarantine: pa.Table, report: ValidationReport, rejected: pa.Table,
                  where: str) -> tuple[pa.Table, ValidationReport]:
    """Append the writer's own rejects (already in quarantine layout) and count them."""
    rejected = _conform_quarantine(rejected, where=f"(rejected rows for {where})")
    table = pa.concat_tables([quarantine, rejected], promote_options="permissive")
    reasons = report.reasons.copy()
    for r in rejected.column("reason").to_pylist():
        reasons[r] = reasons.get(r, 0) + 1
    merged = ValidationReport(
        report.input_rows + rejected.num_rows, report.accepted,
        report.quarantined + rejected.num_rows,
        {r: reasons[r] for r in QUARANTINE_REASONS if r in reasons},
        rejected=rejected.num_rows, images_checked=report.images_checked,
        images_dropped=report.images_dropped, sizes_corrected=report.sizes_corrected,
        examples=_examples(table))
    _check_invariant(merged)
    return table, merged


def _write_images(table: pa.Table, uri: str, per_shard: int, storage_options: dict) -> None:
    """One part, or - with encoded images inline - parts of ``per_shard`` rows each, so a
    reader (or a Ray Data block) never has to hold millions of images at once."""
    packed = "bytes" in table.column_names and table.column("bytes").null_count < table.num_rows
    if not packed or table.num_rows <= per_shard:
        storage.write_table(table, uri, **storage_options)
        return
    for k, start in enumerate(range(0, table.num_rows, per_shard)):
        # the first part replaces the old table's parts; the others are added next to it
        storage.write_table(table.slice(start, per_shard), uri, part=f"part-{k:05d}.parquet",
                            mode="overwrite" if k == 0 else "add", **storage_options)


def _split_counts(samples: pa.Table) -> dict[str, dict[str, int]]:
    """split -> samples and distinct images of the accepted samples."""
    counts: dict[str, tuple[set, list]] = {}
    for split, image_id in zip(samples.column("split").to_pylist(),
                               samples.column("image_id").to_pylist()):
        images, n = counts.setdefault(split, (set(), [0]))
        images.add(image_id)
        n[0] += 1
    return {s: dict(images=len(i), samples=n[0]) for s, (i, n) in sorted(counts.items())}


@dataclass
class Checked:
    """A dataset's tables after the row checks, ready for :func:`publish`."""

    samples: pa.Table  # the accepted rows
    images: pa.Table  # the images that opened, width/height from the files
    quarantine: pa.Table
    report: ValidationReport
    policy: dict  # the check options a later `clipvg validate` re-applies


def check_tables(root: str, samples: pa.Table, images: pa.Table, *,
                 rejected: pa.Table | None = None,
                 **check_options_and_storage_options) -> Checked:
    """The row checks of :func:`ingest` without writing anything. ``rejected``: rows the
    writer could not even parse, in quarantine layout (reason, detail, input_row); appended
    to the quarantine and counted."""
    check, so = _split_options(check_options_and_storage_options)
    accepted, quarantine, images_out, report = check_samples(samples, images, root, **check, **so)
    if rejected is not None:
        quarantine, report = _add_rejected(quarantine, report, rejected, root)
    policy = dict(max_text_tokens=check.get("max_text_tokens", 75),
                  drop_duplicates=check.get("drop_duplicates", True))
    return Checked(accepted, images_out, quarantine, report, policy)


def _check_layout(extra_tables: dict, images_per_shard: int) -> None:
    clash = sorted(set(extra_tables) & set(RESERVED))
    if clash:
        raise ValueError(f"extra table names {clash} are reserved for the dataset layout")
    if images_per_shard < 1:
        raise ValueError(f"images_per_shard must be >= 1, got {images_per_shard}")


def publish(root: str, checked: Checked, *, manifest: dict,
            extra_tables: dict[str, pa.Table] | None = None, images_per_shard: int = 1000,
            **storage_options) -> None:
    """Write samples/, images/, quarantine/, each extra table, and manifest.json last (it is
    removed first: the dataset is incomplete until it is rewritten).

    The manifest is ``manifest`` plus ``validation`` (the report), ``validation_options`` and,
    unless given, ``counts`` (per split: samples and distinct images accepted) and ``tables``.
    """
    so = storage_options
    extra_tables = dict(extra_tables or {})
    _check_layout(extra_tables, images_per_shard)
    manifest_uri = storage.join(root, "manifest.json")
    storage.remove(manifest_uri, **so)
    at = lambda name: storage.join(root, name)  # noqa: E731
    storage.write_table(validate_table(checked.samples, SAMPLES, where=at("samples")),
                        at("samples"), **so)
    _write_images(validate_table(checked.images, "images", where=at("images")), at("images"),
                  images_per_shard, so)
    storage.write_table(checked.quarantine, at("quarantine"), **so)
    for name, table in extra_tables.items():
        if name in SPECS:  # known tables get canonical types (list<double> box -> float32)
            table = conform(table, SPECS[name])
        storage.write_table(table, at(name), **so)
    # the policy the dataset was accepted under; `clipvg validate` re-applies it by default
    out = dict(manifest, validation=checked.report.as_dict(), validation_options=checked.policy)
    out.setdefault("counts", _split_counts(checked.samples))
    out.setdefault("tables", ["samples", "images", "quarantine", *extra_tables])
    storage.write_json(out, manifest_uri, **so)


def ingest(root: str, samples: pa.Table, images: pa.Table, *, manifest: dict,
           rejected: pa.Table | None = None, extra_tables: dict[str, pa.Table] | None = None,
           images_per_shard: int = 1000, **check_options_and_storage_options) -> ValidationReport:
    """Validate (:func:`check_tables`), then :func:`publish` samples/, images/, quarantine/,
    each extra table, and manifest.json last.

    ``rejected``: rows the writer could not even parse (see :func:`check_tables`).
    ``extra_tables`` (e.g. ``detections``) are written as given, cast and validated when
    schema.SPECS knows the name. Options: those of :func:`check_samples`; the rest are storage
    options (``endpoint_url=``).
    """
    _, so = _split_options(check_options_and_storage_options)
    _check_layout(extra_tables or {}, images_per_shard)  # before any work
    storage.remove(storage.join(root, "manifest.json"), **so)  # incomplete until rewritten
    checked = check_tables(root, samples, images, rejected=rejected,
                           **check_options_and_storage_options)
    publish(root, checked, manifest=manifest, extra_tables=extra_tables,
            images_per_shard=images_per_shard, **so)
    return checked.report


def _next_part(uri: str, storage_options: dict) -> str:
    """A part name not used yet in the Parquet folder ``uri``, sorting after the others."""
    names = {p.rsplit("/", 1)[-1] for p in storage.list_parts(uri, **storage_options)}
    k = len(names)
    while f"part-{k:05d}.parquet" in names:
        k += 1
    return f"part-{k:05d}.parquet"


def validate_dataset(root: str, *, apply: bool = True,
                     **check_options_and_storage_options) -> ValidationReport:
    """Re-check an existing dataset in place; with ``apply``, bad rows move from samples/ to
    quarantine/ and the manifest counts are updated.

    Order for a crash at any point: manifest removed (incomplete), rows added to quarantine/,
    samples/ rewritten, manifest written. A row may be in both tables after a crash, never in
    neither. The images table is left as it is (readers only open images their samples use).
    Raises :class:`DatasetNotFoundError` when ``root`` has no manifest.json.
    """
    check, so = _split_options(check_options_and_storage_options)
    manifest_uri = storage.join(root, "manifest.json")
    if not storage.exists(manifest_uri, **so):
        raise DatasetNotFoundError(f"no dataset at {root}: manifest.json is missing (not a "
                                   "dataset, or one still being written)")
    manifest = storage.read_json(manifest_uri, **so)
    # options not given (None) follow the policy the dataset was ingested under, e.g. an
    # official import keeps repeated rows, so re-validating it must not quarantine them
    for key, value in (manifest.get("validation_options") or {}).items():
        if check.get(key) is None:
            check[key] = value
    check = {k: v for k, v in check.items() if v is not None}
    samples = storage.read_table(storage.join(root, "samples"), **so)
    images = storage.read_table(storage.join(root, "images"), **so)
    try:
        accepted, quarantine, _, report = check_samples(samples, images, root, **check, **so)
    except SchemaError as e:  # name the dataset: the message names table, column and row
        raise SchemaError(f"{root}: {e}") from None
    if not apply or not report.quarantined:
        return report
    storage.remove(manifest_uri, **so)
    where = storage.join(root, "quarantine")
    storage.write_table(quarantine, where, part=_next_part(where, so), mode="add", **so)
    storage.write_table(validate_table(accepted, SAMPLES, where=storage.join(root, "samples")),
                        storage.join(root, "samples"), **so)
    counts = manifest.setdefault("counts", {})
    for split in counts:
        counts[split]["samples"] = 0
    for split, c in _split_counts(accepted).items():
        counts.setdefault(split, {"images": c["images"]})["samples"] = c["samples"]
    manifest["validation"] = report.as_dict()
    storage.write_json(manifest, manifest_uri, **so)
    return report
