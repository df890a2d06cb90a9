"""``clipvg convert-official IN OUT``: official CLIP-VG checkpoint -> clipvg model folder.

The checkpoint is read with a restricted unpickler (tensors, containers, primitives and
``argparse.Namespace`` only), so a malicious file is refused before any of its code runs. The
architecture comes from ``--official-config`` (a fixture-style config.json) or from the
checkpoint's ``args.model``; ``--arch`` and ``--text-heads`` override the latter. An ``OUT``
that already holds a model (``model.safetensors`` or ``model_config.json``) is refused before
the checkpoint is read, unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="IN", help="official checkpoint (.pth) or state_dict")
    parser.add_argument("out", metavar="OUT",
                        help="output folder for model.safetensors + model_config.json")
    parser.add_argument("--official-config", metavar="CONFIG_JSON", default=None,
                        help="fixture-style config.json giving the exact architecture")
    parser.add_argument("--arch", default=None,
                        help="open_clip model name overriding args.model (e.g. ViT-B-16)")
    parser.add_argument("--text-heads", type=int, default=None,
                        help="text tower head count (not recoverable from tensor shapes)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a model already in OUT (default: refuse)")


def run(args: argparse.Namespace) -> int:
    # Imported here so `clipvg --help` does not pay for torch; open_clip is imported only once
    # the checkpoint has been read safely, so bad input is refused quickly.
    from clipvg.data import storage
    from clipvg.model.convert import ConversionError, convert_official
    from clipvg.model.io import CONFIG_FILE, WEIGHTS_FILE

    storage.refuse_existing(args.out, (WEIGHTS_FILE, CONFIG_FILE), overwrite=args.overwrite)
    try:
        model, _ = convert_official(args.src, args.out, args.official_config, args.arch,
                                    args.text_heads)
    except ConversionError as e:
        print(f"clipvg convert-official: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. OUT not writable
        print(f"clipvg convert-official: error: {e}", file=sys.stderr)
        return 2
    # deferred: loads open_clip; paid only when this runs, not on import
    from clipvg.model.clipvg import count_parameters

    total, trainable = count_parameters(model)
    print(f"converted {args.src} -> {args.out} ({total:,} parameters, {trainable:,} trainable)")
    return 0
