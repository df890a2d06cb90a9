"""What a folder holds, to show a refused command changed nothing."""

from pathlib import Path


def listing(root: str | Path) -> list[tuple[str, int, int]]:
    """Every file under ``root``: (relative path, size, mtime in ns), sorted."""
    root = Path(root)
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*") if p.is_file())


def refusal_line(err: str, command: str, path: str | Path) -> str:
    """The one stderr line of a refusal of ``clipvg <command>``, checked to name ``path`` and
    ``--overwrite``."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"clipvg {command}: ") and str(path) in line and "--overwrite" in line, line
    assert "Traceback" not in err
    return line
