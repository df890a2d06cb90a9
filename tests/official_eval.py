"""Official-format evaluation inputs for the ``clipvg evaluate`` tests (test_evaluate.py,
test_job_submit.py): split files in the three tuple layouts of the official code, images, and
the committed official fixture checkpoint converted with ``convert-official``.

Layouts (``clipvg.sources.official.importer``): the COCO family (``unc``) stores
``(image, aux_1, [x, y, w, h], expression, aux_2)``, ``referit``
``(image, aux_1, [x1, y1, x2, y2], expression, aux_2)``, ``flickr``
``(image, [x1, y1, x2, y2], phrase)``. Boxes here are given as ``x0, y0, x1, y1`` pixels and
written in the key's layout.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OFFICIAL_TINY = REPO / "tests" / "fixtures" / "clipvg_official" / "tiny"
FORMS = {"unc": "zip", "referit": "legacy", "flickr": "pickle"}  # torch.save zip / legacy, pickle
WORDS = ("red", "blue", "small", "left", "circle", "square", "the", "near", "big", "star")


def convert_fixture(out: Path) -> str:
    """The committed official fixture checkpoint converted to a clipvg model folder at ``out``."""
    from clipvg.model.convert import convert_official

    convert_official(OFFICIAL_TINY / "official_state_dict.pt", out, OFFICIAL_TINY / "config.json")
    return str(out)


def write_images(folder: Path, sizes: dict[str, tuple[int, int]], seed: int = 0) -> None:
    """Noise images (W, H) named by ``sizes``' keys (format from the extension)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in sizes.items():
        pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, format="JPEG" if name.endswith(".jpg") else "PNG",
                                     quality=95)


def entry(key: str, image: str, box: list[float], text: str, row: int) -> tuple:
    """One split-file entry of ``key``'s layout for an ``x0, y0, x1, y1`` box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if key == "flickr":
        return (image, [x0, y0, x1, y1], text)
    coords = [x0, y0, x1 - x0, y1 - y0] if key in ("unc", "unc+", "gref", "gref_umd") else [x0, y0, x1, y1]
    return (image, f"{row}.pth", coords, text, [("r1", [text.split()[0]])])


def write_split_files(split_root: Path, key: str, splits: dict[str, list[tuple]]) -> None:
    """``{split_root}/{key}/{key}_{split}.pth`` from rows ``(image, box_xyxy, text)``."""
    folder = split_root / key
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        entries = [entry(key, image, box, text, i) for i, (image, box, text) in enumerate(rows)]
        path, form = folder / f"{key}_{split}.pth", FORMS[key]
        if form == "pickle":
            path.write_bytes(pickle.dumps(entries))
        else:
            torch.save(entries, path, _use_new_zipfile_serialization=form == "zip")


def random_rows(sizes: dict[str, tuple[int, int]], per_image: dict[str, int], seed: int) -> list[tuple]:
    """``(image, box_xyxy, text)`` rows: ``per_image[name]`` random boxes on each image."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, n in per_image.items():
        w, h = sizes[name]
        for _ in range(n):
            x0, y0 = rng.uniform(0, 0.5 * w), rng.uniform(0, 0.5 * h)
            box = [x0, y0, x0 + rng.uniform(0.2, 0.5) * w, y0 + rng.uniform(0.2, 0.5) * h]
            rows.append((name, box, " ".join(rng.choice(WORDS, 4))))
    return rows


def import_split_files(key: str, split_root: Path, image_dir: Path, out: str, splits: list[str],
                       **storage_options) -> None:
    """``clipvg import-official``'s importer (copy mode); every row must be accepted."""
    from clipvg.sources.official.importer import import_official

    report = import_official(key, str(split_root), None, out, image_dir=str(image_dir), splits=splits,
                             progress=False, **storage_options)
    v = report.validation
    assert v.quarantined == 0 and v.accepted == v.input_rows, v.summary()
