"""``clipvg synth``: write the synthetic grounding world to a URI.

Example::

    clipvg synth --out runs/world --images 2000 --val 200 --test 200 --seed 0
    clipvg synth --out s3://bucket/world --endpoint-url http://127.0.0.1:9000 --images 500

An identical world already at ``--out`` is reused; a different dataset there is refused unless
``--overwrite`` (then its tables, quarantine and image files are removed first).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from clipvg.config import SynthConfig
from clipvg.errors import UserError
from clipvg.sources.synthetic.scenes import same_world, world_key, write_world


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("--out", required=True, help="dataset root: a path or URI (s3://...)")
    parser.add_argument("--images", type=int, default=d.train_images, help="training images")
    parser.add_argument("--val", type=int, default=d.val_images, help="validation images")
    parser.add_argument("--test", type=int, default=d.test_images, help="test images")
    parser.add_argument("--seed", type=int, default=0, help="world seed (non-negative)")
    parser.add_argument("--image-size", type=int, default=d.image_size, help="side in pixels")
    parser.add_argument("--min-objects", type=int, default=d.min_objects)
    parser.add_argument("--max-objects", type=int, default=d.max_objects)
    parser.add_argument("--format", choices=("png", "jpeg"), default="png",
                        help="image file format")
    parser.add_argument("--embed", action="store_true",
                        help="store image bytes in the images table instead of files/")
    parser.add_argument("--endpoint-url", default=None,
                        help="S3-compatible endpoint (default: AWS_ENDPOINT_URL, else AWS)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if an identical world is already there")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different dataset already at --out (without it, synth "
                             "refuses; an identical world is reused)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _check(args: argparse.Namespace) -> str | None:
    """An error message for invalid arguments, or None."""
    if min(args.images, args.val, args.test) < 0:
        return "image counts must be >= 0"
    if args.seed < 0:
        return "--seed must be >= 0"
    if args.image_size < 32:
        return "--image-size must be >= 32"
    if not 1 <= args.min_objects <= args.max_objects:
        return "need 1 <= --min-objects <= --max-objects"
    return None


# What a dataset root holds (docs/data.md): replaced as a whole by --overwrite, nothing else
DATASET_ENTRIES = ("manifest.json", "samples", "images", "quarantine", "detections", "triplets",
                   "captions", "files")


def describe(manifest: dict) -> str:
    """A dataset's manifest in a few words, for messages."""
    counts = manifest.get("counts") or {}
    sizes = "/".join(str((counts.get(s) or {}).get("images", "?")) for s in ("train", "val", "test"))
    what = manifest.get("dataset") or manifest.get("kind") or "dataset"
    seed = f", seed {manifest['seed']}" if "seed" in manifest else ""
    return f"{what}{seed}, {sizes} train/val/test images"


def run(args: argparse.Namespace) -> int:
    from clipvg.data import storage  # heavy imports only when the command runs

    error = _check(args)
    if error:
        print(f"clipvg synth: error: {error}")
        return 2
    cfg = dataclasses.replace(
        SynthConfig(), image_size=args.image_size, min_objects=args.min_objects,
        max_objects=args.max_objects, train_images=args.images, val_images=args.val,
        test_images=args.test,
    )
    options = storage.options_from_config(None, endpoint_url=args.endpoint_url)
    storage.check_access(args.out, **options)
    manifest_uri = storage.join(args.out, "manifest.json")
    before = (storage.read_json(manifest_uri, **options)
              if storage.exists(manifest_uri, **options) else None)
    splits = {"train": cfg.train_images, "val": cfg.val_images, "test": cfg.test_images}
    if before is not None and not same_world(before, world_key(cfg, args.seed, splits, args.format, args.embed)):
        if not args.overwrite:
            raise UserError(f"{args.out} already holds another dataset ({describe(before)}); "
                            f"write to another --out, or replace it with --overwrite")
        for name in DATASET_ENTRIES:  # the old tables, quarantine and image files go too
            storage.remove_tree(storage.join(args.out, name), **options)
    start = time.perf_counter()
    manifest = write_world(
        args.out, cfg, seed=args.seed, image_format=args.format, embed_images=args.embed,
        progress=False if args.no_progress else None, force=args.force, **options,
    )
    seconds = time.perf_counter() - start
    counts = manifest["counts"]
    parts = ", ".join(f"{s} {counts[s]['images']} img/{counts[s]['samples']} expr"
                      for s in ("train", "val", "test"))
    note = " (already there, unchanged)" if before == manifest and not args.force else ""
    print(f"synth: {parts} -> {args.out} in {seconds:.1f}s (seed {args.seed}){note}")
    return 0
