"""The ``clipvg`` command.

Each subcommand lives next to the code it drives and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. They are imported lazily, so
``clipvg --help`` stays fast and a subcommand's heavy imports (torch, open_clip) are paid only
when it runs.

Errors: bad input ends with one line on stderr, ``clipvg <command>: <what is wrong>``, and exit
status 2 (Ctrl-C: 130); ``clipvg --debug <command> ...`` or ``CLIPVG_DEBUG=1`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from urllib.parse import urlsplit

from clipvg import __version__
from clipvg.errors import InterruptedRun, Terminated, UserError, how_stopped, sigterm_as_interrupt

# name -> (module, one-line help). The module provides add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("clipvg.sources.synthetic.cli", "write the synthetic grounding world to a URI"),
    "train": ("clipvg.distributed.trainer_cli", "train CLIP-VG on Ray Train (DDP workers, checkpoints on storage)"),
    "pipeline": ("clipvg.distributed.pipeline_cli", "the unsupervised method end to end: pseudo-labels, measurers, scoring, SSA/MSA with Ray Tune, report"),
    "train-local": ("clipvg.engine.local_cli", "train CLIP-VG in this process (no Ray)"),
    "score": ("clipvg.distributed.score_cli", "score pseudo-labels' reliability with a measurer (Ray Data actor pool)"),
    "evaluate": ("clipvg.distributed.evaluate_cli", "Acc@0.5 of a checkpoint on named splits: predictions, metrics, worst-case gallery (Ray Data actor pool)"),
    "predict": ("clipvg.predict", "predict the box of an expression in an image"),
    "compare": ("clipvg.compare", "runs side by side: accuracy table and learning curves per expression type"),
    "convert-official": ("clipvg.model.convert_cli", "convert an official CLIP-VG checkpoint"),
    "pretrain-towers": ("clipvg.pretrain.cli", "pre-train tiny CLIP towers on synthetic scenes"),
    "benchmark": ("clipvg.bench.cli", "measure throughput (data streaming, training); JSON + Markdown"),
    "demo": ("clipvg.demo", "the embedded demo: synthetic world, training, report"),
    "validate": ("clipvg.data.validate_cli", "check a dataset's rows; quarantine bad ones"),
    "import-official": ("clipvg.sources.official.cli", "import official CLIP-VG split files (.pth)"),
    "export-official": ("clipvg.sources.official.cli", "export a split, or a pipeline run's refined release, as official .pth files"),
    "records": ("clipvg.sources.records.cli", "convert real detector / scene-graph / captioner output into a dataset's record tables"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipvg", description="CLIP-VG visual grounding: data, training, prediction.")
    parser.add_argument("--version", action="version", version=f"clipvg {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: CLIPVG_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        # add_arguments is imported lazily only for the chosen command (see main)
    return parser


def _debug_from_env() -> bool:
    return os.environ.get("CLIPVG_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _chain(err: BaseException):
    """``err``, then what caused it (``raise ... from``, an exception during handling, a Ray
    task's ``cause``), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError
        todo += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else url


def connection_error_line(err: BaseException) -> str | None:
    """One line naming the storage endpoint when ``err`` comes from an object store that could
    not be reached (botocore / aiohttp connection errors, anywhere in the exception chain);
    None for anything else. Only modules already imported are looked at."""
    botocore = sys.modules.get("botocore.exceptions")
    aiohttp = sys.modules.get("aiohttp")
    for e in _chain(err):
        if botocore is not None and isinstance(e, botocore.ConnectionError):
            url = getattr(e, "kwargs", {}).get("endpoint_url")
            where = f"the storage endpoint {_endpoint(url)}" if url else "the storage endpoint"
            return (f"cannot reach {where} ({type(e).__name__}: {_one_line(e)}); check "
                    "storage.endpoint_url / --endpoint-url and that the server is up")
        if aiohttp is not None and isinstance(e, aiohttp.ClientConnectorError):
            return (f"cannot reach the storage endpoint {e.host}:{e.port} ({_one_line(e)}); "
                    "check storage.endpoint_url / --endpoint-url and that the server is up")
    return None


# What the file system says about a place the user named (storage.root, --out): no code is wrong
_PLACE_ERRNOS = {errno.ENOTDIR, errno.EISDIR, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC,
                 errno.EDQUOT}


def file_system_error_line(err: BaseException) -> str | None:
    """One line when ``err`` is (or was caused by) an OSError about a local place the user
    chose - a file where a folder belongs, a read-only or full disk, no permission -; None for
    anything else."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in _PLACE_ERRNOS and e.filename:
            return (f"cannot write or read {e.filename}: {e.strerror}; check storage.root / --out "
                    "and that the folder is writable")
    return None


def _user_error(err: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``err`` (itself, or one a Ray task raised), or None."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, UserError):  # a RayTaskError posing as its cause's class
        return cause
    return err if isinstance(err, UserError) else None


def main(argv: list[str] | None = None) -> int:
    """Run one ``clipvg`` command; returns its exit status.

    Bad input (:class:`~clipvg.errors.UserError`), an unreachable storage endpoint, a place the
    file system refuses (a file where a folder belongs, a read-only disk), Ctrl-C and SIGTERM
    end with one line on stderr (exit 2; 130 for Ctrl-C, 143 for SIGTERM); ``--debug`` or
    ``CLIPVG_DEBUG=1`` re-raises them with the full traceback. Any other exception is a bug and
    keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_from_env()
    while argv and argv[0] == "--debug":
        debug = True
        argv.pop(0)
    parser = build_parser()
    # Parse the command name first, then let its module declare its own arguments.
    if not (argv and argv[0] in COMMANDS):
        parser.parse_args(argv)  # --version, help, usage errors: argparse exits
        return 2
    command = argv[0]
    module = importlib.import_module(COMMANDS[command][0])
    sp = argparse.ArgumentParser(prog=f"clipvg {command}", description=COMMANDS[command][1])
    module.add_arguments(sp)
    # intermixed: dotted overrides (a positional list) may come before or after any flag
    args = sp.parse_intermixed_args(argv[1:])
    try:
        with sigterm_as_interrupt():  # a preemption keeps what Ctrl-C keeps
            return int(module.run(args) or 0)
    except KeyboardInterrupt as stop:
        if debug:
            raise
        print(f"clipvg {command}: {how_stopped(stop)}", file=sys.stderr)
        return Terminated.exit_code if isinstance(stop, Terminated) else InterruptedRun.exit_code
    except Exception as err:
        user = _user_error(err)
        line = None if user is not None else connection_error_line(err) or file_system_error_line(err)
        if debug or (user is None and line is None):
            raise
        if user is not None:
            from clipvg.config import ConfigError  # deferred: yaml and the schema, ~0.15 s of every start

            kind = "config error: " if isinstance(user, ConfigError) else ""
            line, code = f"{kind}{_one_line(user) or type(user).__name__}", user.exit_code
        else:
            code = UserError.exit_code
        print(f"clipvg {command}: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
