"""``clipvg records``: convert the output of a real pseudo-label model into a record table of a
clipvg dataset (``detections``, ``triplets`` or ``captions``; ``docs/pseudo.md``).

Examples::

    clipvg records --dataset runs/unc --format coco-detections --input dets.json \\
        --annotations instances_train2014.json
    clipvg records --dataset runs/unc --format pseudoq-detections \\
        --input r101/unc_train_pseudo_split{0,1}_detection_results.pth \\
        --attributes r152/unc_train_pseudo_split{0,1}_attr_detection_results.pth
    clipvg records --dataset s3://bucket/unc --format reltr --input reltr_outputs.jsonl \\
        --endpoint-url http://127.0.0.1:9000
    clipvg records --dataset runs/unc --format captions-jsonl --input captions.jsonl

Records of images that are not in the dataset's images table are dropped and reported (count and
first names); none matching at all is an error. A malformed record (bad box, score outside
[0, 1], missing key) ends the command with one line naming the file and the row; nothing is
written then. An existing record table is refused unless ``--overwrite``. Exit status 0, or 2
with a one-line error.
"""

from __future__ import annotations

import argparse
from typing import Any

from clipvg.data import storage
from clipvg.errors import UserError
from clipvg.sources.records import captions, coco, pseudoq, reltr
from clipvg.sources.records.common import Collected, Images, read_any, read_rows
from clipvg.sources.records.writer import check_target, publish, read_images

# format -> (record table, what --input is)
FORMATS: dict[str, tuple[str, str]] = {
    "coco-detections": ("detections", "COCO detection results JSON (needs --annotations)"),
    "pseudoq-detections": ("detections", "Pseudo-Q's *_detection_results.pth (or JSON); "
                                         "optional --attributes *_attr_detection_results.pth"),
    "reltr": ("triplets", "RelTR outputs, one JSON object per image and line"),
    "captions-jsonl": ("captions", "captions, one JSON object per line (or CLIP-VG's "
                                   "*_caption_data.pth)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, metavar="URI",
                        help="clipvg dataset root (path or s3://...) holding images/ and "
                             "manifest.json")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS),
                        help="; ".join(f"{k}: {v[1]} -> {v[0]}/" for k, v in FORMATS.items()))
    parser.add_argument("--input", required=True, nargs="+", metavar="FILE",
                        help="the tool's output file(s); several (e.g. the 16 shards of a "
                             "Pseudo-Q run) go into one table")
    parser.add_argument("--annotations", default=None, metavar="FILE",
                        help="coco-detections: COCO instances JSON (images: id -> file_name, "
                             "categories: id -> name)")
    parser.add_argument("--attributes", default=None, nargs="+", metavar="FILE",
                        help="pseudoq-detections: Pseudo-Q's attribute detection file(s), one "
                             "per --input file, in the same order; their attributes colour the "
                             "--input detections")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the record table if the dataset has one")
    parser.add_argument("--endpoint-url", default=None,
                        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)")


def _check_flags(args: argparse.Namespace) -> None:
    if args.format == "coco-detections" and args.annotations is None:
        raise UserError("--format coco-detections needs --annotations (the COCO instances JSON "
                        "that maps image ids to file names and category ids to names)")
    if args.annotations is not None and args.format != "coco-detections":
        raise UserError(f"--annotations is for --format coco-detections, not {args.format}")
    if args.attributes is not None and args.format != "pseudoq-detections":
        raise UserError(f"--attributes is for --format pseudoq-detections, not {args.format}")
    if args.attributes is not None and len(args.attributes) != len(args.input):
        raise UserError(f"--attributes needs one file per --input file ({len(args.input)}, paired "
                        f"in order), got {len(args.attributes)}")


def convert(fmt: str, args: argparse.Namespace, images: Images, **so: Any) -> Collected:
    """Read the input file(s) of ``fmt`` and return the rows of its record table."""
    out = None
    if fmt == "coco-detections":
        annotations = read_any(args.annotations, **so)
        for uri in args.input:
            out = coco.convert(read_any(uri, **so), annotations, images, results_uri=uri,
                               annotations_uri=args.annotations, out=out)
    elif fmt == "pseudoq-detections":
        for i, uri in enumerate(args.input):
            attr_uri = None if args.attributes is None else args.attributes[i]
            attributes = None if attr_uri is None else read_any(attr_uri, **so)
            out = pseudoq.convert(read_any(uri, **so), attributes, images, uri=uri,
                                  attributes_uri=attr_uri, out=out)
    else:
        module = reltr if fmt == "reltr" else captions
        for uri in args.input:
            out = module.convert(read_rows(uri, **so), images, uri=uri, out=out)
    return out


def run(args: argparse.Namespace) -> int:
    _check_flags(args)
    table = FORMATS[args.format][0]
    so = storage.options_from_config(None, endpoint_url=args.endpoint_url)
    storage.check_access(args.dataset, *args.input, args.annotations, *(args.attributes or ()),
                         **so)
    manifest = check_target(args.dataset, table, overwrite=args.overwrite, **so)
    images = read_images(args.dataset, **so)
    got = convert(args.format, args, images, **so)
    got.check_not_empty(", ".join(args.input), images)
    entry = dict(format=args.format, inputs=list(args.input), rows=got.rows,
                 images=got.images, records=got.records, dropped_records=got.dropped,
                 dropped_images=len(got.unknown), first_dropped=got.unknown[:5], notes=got.notes)
    if args.annotations is not None:
        entry["annotations"] = args.annotations
    if args.attributes is not None:
        entry["attributes"] = list(args.attributes)
    uri = publish(args.dataset, table, got.table(), manifest, entry, **so)
    print(f"{table}: {got.rows} rows for {got.images} images from {', '.join(args.input)} "
          f"({args.format})")
    for line in [got.dropped_line(), *got.notes]:
        if line:
            print(f"  {line}")
    print(f"-> {uri}")
    return 0
