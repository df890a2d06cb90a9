"""A tiny clipvg dataset for the record converters: two JPEG images named as the official
imports name them, one ground-truth sample each, written through clipvg.data.validate.ingest."""

from __future__ import annotations

import io
import shutil

import pyarrow as pa
import pytest
from PIL import Image

from clipvg.data import storage
from clipvg.data.validate import ingest

IMG_A = "COCO_train2014_000000000839.jpg"  # 640 x 480
IMG_B = "COCO_train2014_000000000036.jpg"  # 500 x 375
SIZES = {IMG_A: (640, 480), IMG_B: (500, 375)}


def _write_dataset(root: str) -> None:
    images, samples = [], []
    for name, (w, h) in SIZES.items():
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (120, 110, 100)).save(buf, format="JPEG")
        storage.write_bytes(buf.getvalue(), storage.join(root, "files", name))
        images.append(dict(image_id=name, uri=f"files/{name}", width=w, height=h))
        samples.append(dict(sample_id=f"gt-{name}", image_id=name, text="the thing",
                            box=[10.0, 10.0, 60.0, 60.0], source="gt", split="train",
                            dataset="handmade"))
    ingest(root, pa.Table.from_pylist(samples), pa.Table.from_pylist(images),
           manifest={"kind": "clipvg-dataset", "dataset": "handmade"})


@pytest.fixture(scope="session")
def _pristine(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("records") / "pristine")
    _write_dataset(root)
    return root


@pytest.fixture
def dataset(_pristine, tmp_path):
    """A fresh copy of the tiny dataset (root path)."""
    root = str(tmp_path / "ds")
    shutil.copytree(_pristine, root)
    return root
