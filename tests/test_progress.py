"""clipvg.progress: a bar on a terminal (even one that reports no size), nothing in a log."""

import io
import os
import pty
import subprocess
import sys

from clipvg.progress import progress, show_progress


def test_no_bar_without_a_terminal(capsys):
    bar = progress(range(5), desc="epoch 1/2")
    assert list(bar) == list(range(5))
    bar.set_postfix(loss="0.1")  # a disabled bar still takes what the loop tells it
    assert capsys.readouterr().err == ""
    assert show_progress(False) is False and show_progress(True) is True


def test_forced_bar_writes_to_stderr(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress([1, 2, 3], desc="epoch 1/2", enabled=True)) == [1, 2, 3]
    assert "epoch 1/2:   0%" in err.getvalue() and "0/3" in err.getvalue()


def test_bar_in_a_terminal_that_reports_no_size():
    """A pseudo-terminal nobody sized (0 x 0): tqdm alone draws nothing there."""
    code = "from clipvg.progress import progress\nfor _ in progress(range(3), desc='epoch 1/2'): pass\n"
    leader, follower = pty.openpty()  # a fresh pty reports 0 rows, 0 columns
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([sys.executable, "-c", code], stdin=follower, stdout=follower,
                          stderr=follower, env=env, timeout=60)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"epoch 1/2:   0%" in out and b"0/3" in out
