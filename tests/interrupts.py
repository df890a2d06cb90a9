"""Shared by the Ctrl-C tests of train-local and of the Ray launchers."""

import pytest

from clipvg.errors import InterruptedRun


def interrupted(call, *args, **kwargs) -> str:
    """The InterruptedRun message of ``call(...)``; a KeyboardInterrupt that escapes (what the
    user saw as a 76-line traceback) fails the test instead of stopping pytest."""
    try:
        call(*args, **kwargs)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a KeyboardInterrupt")
    except InterruptedRun as e:
        return str(e)
    pytest.fail("no InterruptedRun")
