"""Errors that mean "the input is wrong", not "clipvg is broken".

The ``clipvg`` command prints a :class:`UserError` as one line naming what is wrong (which file,
which row, which key) and exits with status 2; the traceback is shown only with ``--debug`` or
``CLIPVG_DEBUG=1``. Raise it (or a subclass) wherever bad input is detected, with a message a
user can act on without reading the code.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class UserError(Exception):
    """Bad input: a missing or malformed file, an invalid value, a request that cannot fit.

    The message is the whole report: it names the file / row / key and what is wrong with it.
    """

    exit_code = 2


class InterruptedRun(UserError):
    """The user stopped a run (Ctrl-C), or the system did (SIGTERM: a preemption, a scale-down,
    ``kill``); the message says what was kept. Exit 130 for SIGINT, 143 for SIGTERM, as a shell
    reports a process those signals ended."""

    exit_code = 130

    def __init__(self, message: str, *, terminated: bool = False):
        super().__init__(message)
        if terminated:
            self.exit_code = Terminated.exit_code


def how_stopped(stop: BaseException) -> str:
    """The words for a stop in the one line a command prints: SIGTERM or Ctrl-C."""
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt (:func:`sigterm_as_interrupt`), so
    every "keep what is finished and say so" path serves both."""

    exit_code = 143


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises :class:`Terminated` in the main thread (elsewhere:
    unchanged; signal handlers belong to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
