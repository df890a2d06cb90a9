"""Errors that mean "the input is wrong", not "clipvg is broken".

The ``clipvg`` command prints a :class:`UserError` as one line naming what is wrong (which file,
which row, which key) and exits with status 2; the traceback is shown only with ``--debug`` or
``CLIPVG_DEBUG=1``. Raise it (or a subclass) wherever bad input is detected, with a message a
user can act on without reading the code.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a missing or malformed file, an invalid value, a request that cannot fit.

    The message is the whole report: it names the file / row / key and what is wrong with it.
    """

    exit_code = 2


class InterruptedRun(UserError):
    """The user stopped a run (Ctrl-C); the message says what was kept."""

    exit_code = 130
