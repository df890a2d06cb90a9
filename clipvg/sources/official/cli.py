"""``clipvg import-official`` / ``clipvg export-official``: the official CLIP-VG split files
(``{split_root}/{key}/{key}_{split}.pth``) <-> a clipvg dataset.

Examples::

    clipvg import-official --dataset unc --split-root data/full_sup_data \\
        --image-root data/image_data --out runs/unc
    clipvg import-official --dataset unc+ --split-root data/unsup_multi_source \\
        --image-root s3://bucket/image_data --images reference --out s3://bucket/uncp \\
        --endpoint-url http://127.0.0.1:9000
    clipvg import-official --dataset unc --split-root data/full_sup_data --splits train \
        --image-root data/image_data --out runs/unc --add
    clipvg export-official runs/unc --dataset unc --split val --out /tmp/unc_val.pth
    clipvg export-official --run runs/pipeline/demo --dataset unc --out /tmp/refined

Exit status of ``import-official``: 0 every row was accepted, 1 rows were quarantined (the
dataset is written; ``<out>/quarantine`` holds them, as after ``clipvg validate``), 2 usage error.
An ``--out`` that holds a dataset is refused unless ``--overwrite`` (replace it) or ``--add``
(add splits or sources it does not have). ``export-official --run`` writes a pipeline run's
SSA / MSA selections as the refined release (:mod:`clipvg.sources.official.release`).

Split files are read with a restricted unpickler (lists, tuples, strings, numbers only): a file
that would run code on load is refused with a one-line error, before anything is written.
One command serves both directions because both share the key/split vocabulary; the module
dispatches on the command name ``clipvg.cli`` was called with.
"""

from __future__ import annotations

import argparse
import sys

from clipvg.data import storage
from clipvg.sources.official.export import export_split
from clipvg.sources.official.formats import KEYS, SPLITS, TRAIN_SEPARATE
from clipvg.sources.official.release import export_release


def _command(parser: argparse.ArgumentParser) -> str:
    return "export-official" if parser.prog.endswith("export-official") else "import-official"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    command = _command(parser)
    parser.set_defaults(_official_command=command)
    if command == "export-official":
        _export_arguments(parser)
    else:
        _import_arguments(parser)
    parser.add_argument("--endpoint-url", default=None,
                        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)")


def _import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help=f"dataset key: {', '.join(KEYS)}")
    parser.add_argument("--split-root", required=True,
                        help="folder holding <key>/<key>_<split>.pth (and train_separate/)")
    parser.add_argument("--image-root", default=None,
                        help="official image root (holds other/, referit/, Flickr30k/)")
    parser.add_argument("--out", required=True, help="dataset root to write (path or URI)")
    parser.add_argument("--images", choices=("copy", "pack", "reference"), default="copy",
                        help="copy files to <out>/files/, pack bytes into the images "
                             "table, or reference the originals (default: copy)")
    parser.add_argument("--image-dir", default=None,
                        help="folder holding the images, instead of the key's folder "
                             "under --image-root")
    parser.add_argument("--splits", default=None,
                        help=f"comma-separated subset of {','.join(SPLITS)},"
                             f"{TRAIN_SEPARATE} (default: all found; trainval is "
                             "always skipped)")
    parser.add_argument("--union-source", default=None, metavar="NAME",
                        help="the pseudo-label source the union file <key>_train_pseudo.pth "
                             "is (unsup_single_source: template); default: none (pseudo)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--overwrite", action="store_true",
                      help="replace the dataset at --out")
    what.add_argument("--add", action="store_true",
                      help="add splits / sources the dataset at --out does not have")
    parser.add_argument("--no-progress", action="store_true",
                        help="never show a progress bar")


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", metavar="URI", nargs="?",
                        help="clipvg dataset root (path or s3://...); or give --run")
    parser.add_argument("--run", default=None, metavar="RUN",
                        help="pipeline run folder: write its SSA / MSA selections as the "
                             "refined release into --out DIR")
    parser.add_argument("--split", default=None, help="split to export, e.g. val (URI form)")
    parser.add_argument("--out", required=True, metavar="FILE.pth|DIR",
                        help="official split file to write (URI form), folder (--run)")
    parser.add_argument("--source", default=None,
                        help="only rows of this source (gt, pseudo, template, ...)")
    parser.add_argument("--dataset", default=None,
                        help=f"dataset key: {', '.join(KEYS)} (--run: default the dataset's)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files that exist at --out")


def _error(command: str, message: str) -> int:
    print(f"clipvg {command}: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    command = args._official_command
    if args.dataset is not None and args.dataset not in KEYS:
        return _error(command, f"unknown dataset key {args.dataset!r}; expected one of "
                               f"{', '.join(KEYS)}")
    try:
        return _run_export(args) if command == "export-official" else _run_import(args)
    except (ValueError, FileNotFoundError, OSError) as e:  # UnsafePickleError is a ValueError
        return _error(command, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _storage_options(args: argparse.Namespace, *uris: str | None) -> dict:
    """The storage options of the command (clipvg.data.storage's one resolution, with
    --endpoint-url), after checking that every URI it names can be reached."""
    options = storage.options_from_config(None, endpoint_url=args.endpoint_url)
    storage.check_access(*uris, **options)
    return options


def _run_import(args: argparse.Namespace) -> int:
    # deferred: loads PIL and tqdm (the validator); start-up time of --help
    from clipvg.sources.official.importer import import_official

    if args.image_root is None and args.image_dir is None:
        return _error("import-official", "give --image-root or --image-dir")
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    options = _storage_options(args, args.out, args.split_root, args.image_root, args.image_dir)
    report = import_official(
        args.dataset, args.split_root, args.image_root, args.out, images=args.images,
        image_dir=args.image_dir, splits=splits, union_source=args.union_source,
        overwrite=args.overwrite, add=args.add,
        progress=False if args.no_progress else None, **options)
    for note in report.notes:
        print(note)
    for f in report.files:
        extra = f", {f['rejected']} malformed" if f["rejected"] else ""
        print(f"{f['name']}: {f['rows']} rows (split {f['split']}, source {f['source']}{extra})")
    v = report.validation
    print(f"{report.images} distinct images ({args.images}); {v.input_rows} samples: "
          f"{v.accepted} accepted, {v.quarantined} quarantined")
    for reason, n in sorted(v.reasons.items()):
        print(f"  quarantined {reason}: {n}")
    print(f"-> {args.out}" + (" (added)" if args.add else ""))
    return 1 if v.quarantined else 0  # as `clipvg validate`: 1 = rows were quarantined


def _run_export(args: argparse.Namespace) -> int:
    if (args.uri is None) == (args.run is None):
        return _error("export-official", "give a dataset URI (with --split) or --run RUN")
    if args.run is not None:
        return _run_release(args)
    if args.split is None or args.dataset is None:
        return _error("export-official", "a dataset URI needs --split and --dataset")
    options = _storage_options(args, args.uri, args.out)
    if not args.overwrite and storage.exists(args.out, **options):
        return _error("export-official", f"{args.out} exists; replace it with --overwrite")
    n = export_split(args.uri, args.dataset, args.split, args.out, source=args.source, **options)
    print(f"exported {n} entries of split {args.split} ({args.dataset} format) -> {args.out}")
    return 0


def _run_release(args: argparse.Namespace) -> int:
    if args.split is not None or args.source is not None:
        return _error("export-official", "--run takes no --split / --source (it writes the "
                                         "run's SSA and MSA selections)")
    options = _storage_options(args, args.run, args.out)
    done = export_release(args.run, args.out, dataset=args.dataset, overwrite=args.overwrite,
                          **options)
    for name, n in done["counts"].items():
        print(f"{name}: {n} entries")
    print(f"exported the refined release of {args.run} ({done['dataset']} format) -> {args.out}")
    return 0
