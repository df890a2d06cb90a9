"""Progress bars for people, silence for logs.

:func:`progress` wraps an iterable in a tqdm bar on stderr only when stderr is a terminal: a run
in a terminal shows where it is, while a run whose output goes to a file, a pipe, a Ray worker's
log or a test's capture gets no carriage-return noise. ``enabled`` overrides the guess (a
``--no-progress`` flag passes ``False``).

Usage::

    bar = progress(loader, total=steps, desc=f"epoch {epoch + 1}/{epochs}")
    for batch in bar:
        ...
        bar.set_postfix(loss=f"{loss:.3f}")
"""

from __future__ import annotations

import shutil
import sys
from typing import TYPE_CHECKING, Iterable, TypeVar

from tqdm import tqdm

if TYPE_CHECKING:
    from tqdm import tqdm

T = TypeVar("T")


def show_progress(enabled: bool | None = None) -> bool:
    """Whether to draw a bar: ``enabled`` when given, else whether stderr is a terminal."""
    if enabled is not None:
        return bool(enabled)
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable: Iterable[T], total: int | None = None, desc: str | None = None, *,
             unit: str = "it", enabled: bool | None = None, leave: bool = False) -> "tqdm":
    """``iterable`` wrapped in a tqdm bar on stderr, drawn only when :func:`show_progress` says so
    (a disabled bar costs nothing and still takes ``set_postfix``).

    ``total`` defaults to ``len(iterable)`` when it has one. The bar is removed when the loop
    ends (``leave=False``), so the lines a loop prints itself (an epoch summary) stay readable.
    """
    show = show_progress(enabled)
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    # A terminal that reports no size (a pseudo-terminal nobody sized reports 0 x 0) makes
    # tqdm draw nothing at all (it hides bars below row 0): give it a size of its own then.
    size = shutil.get_terminal_size((0, 0))
    sized = size.columns > 0 and size.lines > 0
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                disable=not show, dynamic_ncols=sized, ncols=None if sized else 100,
                nrows=None if sized else 20)
