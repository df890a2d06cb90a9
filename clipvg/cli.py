"""The ``clipvg`` command.

Each subcommand lives next to the code it drives and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. They are imported lazily, so
``clipvg --help`` stays fast and a subcommand's heavy imports (torch, open_clip) are paid only
when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). The module provides add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("clipvg.data.synthetic_cli", "write the synthetic grounding world to a URI"),
    "train": ("clipvg.distributed.trainer", "train CLIP-VG on Ray Train (DDP workers, checkpoints on storage)"),
    "pipeline": ("clipvg.distributed.pipeline", "the unsupervised method end to end: pseudo-labels, measurers, scoring, SSA/MSA with Ray Tune, report"),
    "train-local": ("clipvg.engine.local", "train CLIP-VG in this process (no Ray)"),
    "score": ("clipvg.distributed.score_cli", "score pseudo-labels' reliability with a measurer (Ray Data actor pool)"),
    "predict": ("clipvg.predict", "predict the box of an expression in an image"),
    "compare": ("clipvg.compare", "runs side by side: accuracy table and learning curves per expression type"),
    "convert-official": ("clipvg.model.convert_cli", "convert an official CLIP-VG checkpoint"),
    "pretrain-towers": ("clipvg.pretrain.cli", "pre-train tiny CLIP towers on synthetic scenes"),
    "benchmark": ("clipvg.distributed.benchmark_cli", "measure throughput (data streaming, training); JSON + Markdown"),
    "demo": ("clipvg.demo", "the embedded demo: synthetic world, training, report"),
    "validate": ("clipvg.data.validate_cli", "check a dataset's rows; quarantine bad ones"),
    "import-official": ("clipvg.data.official_cli", "import official CLIP-VG split files (.pth)"),
    "export-official": ("clipvg.data.official_cli", "export a split as an official .pth file"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipvg", description="CLIP-VG visual grounding: data, training, prediction.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        # add_arguments is imported lazily only for the chosen command (see main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module declare its own arguments.
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        sp = argparse.ArgumentParser(prog=f"clipvg {argv[0]}", description=COMMANDS[argv[0]][1])
        module.add_arguments(sp)
        args = sp.parse_args(argv[1:])
        from clipvg.config import ConfigError

        try:
            return int(module.run(args) or 0)
        except ConfigError as err:  # bad config / override: one line, no traceback
            print(f"clipvg {argv[0]}: config error: {err}", file=sys.stderr)
            return 2
    parser.parse_args(argv)  # prints help / usage errors
    return 2


if __name__ == "__main__":
    sys.exit(main())
