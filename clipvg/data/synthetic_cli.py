"""``clipvg synth``: write the synthetic grounding world to a URI.

Example::

    clipvg synth --out runs/world --images 2000 --val 200 --test 200 --seed 0
    clipvg synth --out s3://bucket/world --endpoint-url http://127.0.0.1:9000 --images 500
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from clipvg.config import SynthConfig


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
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even if an identical world is already there")
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


def run(args: argparse.Namespace) -> int:
    from clipvg.data import storage  # heavy imports only when the command runs
    from clipvg.data.synthetic import write_world

    error = _check(args)
    if error:
        print(f"clipvg synth: error: {error}")
        return 2
    cfg = dataclasses.replace(
        SynthConfig(), image_size=args.image_size, min_objects=args.min_objects,
        max_objects=args.max_objects, train_images=args.images, val_images=args.val,
        test_images=args.test,
    )
    manifest_uri = storage.join(args.out, "manifest.json")
    before = (storage.read_json(manifest_uri, endpoint_url=args.endpoint_url)
              if storage.exists(manifest_uri, endpoint_url=args.endpoint_url) else None)
    start = time.perf_counter()
    manifest = write_world(
        args.out, cfg, seed=args.seed, image_format=args.format, embed_images=args.embed,
        progress=False if args.no_progress else None, force=args.force,
        endpoint_url=args.endpoint_url,
    )
    seconds = time.perf_counter() - start
    counts = manifest["counts"]
    parts = ", ".join(f"{s} {counts[s]['images']} img/{counts[s]['samples']} expr"
                      for s in ("train", "val", "test"))
    note = " (already there, unchanged)" if before == manifest and not args.force else ""
    print(f"synth: {parts} -> {args.out} in {seconds:.1f}s (seed {args.seed}){note}")
    return 0
