"""``clipvg validate``: re-check a dataset at a URI; bad rows move to its quarantine table.

Example::

    clipvg validate runs/worlds/world-s0            # check, and quarantine bad rows
    clipvg validate s3://bucket/refcoco --endpoint-url http://127.0.0.1:9000 --check-only

Exit code: 0 every row is valid, 1 rows were quarantined (or would be, with --check-only),
2 usage error (e.g. no dataset at the URI).
"""

from __future__ import annotations

import argparse
import sys

from clipvg.data import storage
from clipvg.data.validate import validate_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", help="dataset root: a path or URI (s3://...)")
    parser.add_argument("--endpoint-url", default=None,
                        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--check-only", action="store_true",
                        help="report only; change nothing")
    parser.add_argument("--max-text-tokens", type=int, default=None,
                        help="most CLIP BPE tokens per text (default: the dataset's ingest "
                             "policy, else 75, what fits CLIP's context of 77)")
    dupes = parser.add_mutually_exclusive_group()
    dupes.add_argument("--keep-duplicates", dest="drop_duplicates", action="store_const",
                       const=False, help="accept rows repeating an earlier (image, split, text, box)")
    dupes.add_argument("--drop-duplicates", dest="drop_duplicates", action="store_const",
                       const=True, help="quarantine them (default: the dataset's ingest policy; "
                                        "official imports keep them, other datasets drop them)")
    parser.add_argument("--no-decode", action="store_true",
                        help="read image headers only (fast; corrupt pixel data passes)")
    parser.add_argument("--threads", type=int, default=8, help="images opened in parallel")


def run(args: argparse.Namespace) -> int:
    from clipvg.data.schema import SchemaError  # heavy imports only when the command runs

    if (args.max_text_tokens is not None and args.max_text_tokens < 1) or args.threads < 1:
        print("clipvg validate: error: --max-text-tokens and --threads must be >= 1",
              file=sys.stderr)
        return 2

    options = storage.options_from_config(None, endpoint_url=args.endpoint_url)
    storage.check_access(args.uri, **options)
    try:
        report = validate_dataset(
            args.uri, apply=not args.check_only, max_text_tokens=args.max_text_tokens,
            decode_images=not args.no_decode, drop_duplicates=args.drop_duplicates,
            threads=args.threads, **options)
    except (FileNotFoundError, SchemaError) as exc:  # DatasetNotFoundError, a missing table
        line = " ".join(part.strip() for part in str(exc).splitlines())  # schema errors: 1 line
        print(f"clipvg validate: error: {line}", file=sys.stderr)
        return 2
    print(report.summary())
    for ex in report.examples:
        print(f"  row {ex['input_row']} {ex['sample_id']}: {ex['reason']} ({ex['detail']})")
    if report.quarantined > len(report.examples):
        print(f"  ... and {report.quarantined - len(report.examples)} more")
    if report.quarantined:
        where = f"{args.uri.rstrip('/')}/quarantine"
        print("check only: nothing changed" if args.check_only
              else f"moved {report.quarantined} rows to {where}")
    return 1 if report.quarantined else 0
