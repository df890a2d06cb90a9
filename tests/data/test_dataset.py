"""Reading a written world back: load_split, GroundingDataset, the image cache, bad rows."""

import pickle

import numpy as np
import pyarrow as pa
import pytest
import torch

from clipvg.config import SynthConfig
from clipvg.data import storage
from clipvg.sources.synthetic import scenes as syn
from clipvg.data.dataset import DatasetError, GroundingDataset, SampleRecord, load_split
from clipvg.data.schema import BOX_TYPE, SchemaError

SPLITS = {"train": 6, "val": 3}
CFG = SynthConfig(image_size=96)


@pytest.fixture(scope="module", params=["files", "embedded"])
def world(request, tmp_path_factory):
    root = str(tmp_path_factory.mktemp(request.param))
    syn.write_world(root, CFG, seed=9, splits=SPLITS, progress=False,
                    embed_images=request.param == "embedded")
    return root


def regenerate(image_id):
    _, seed, split, i = image_id.split("-")
    return syn.generate_image(syn.image_rng(int(seed[1:]), split, int(i)), CFG)


def test_load_split_round_trips_the_generator(world):
    records = load_split(world, "val")
    assert all(isinstance(r, SampleRecord) for r in records)
    assert {r.image_id for r in records} == {f"syn-s9-val-{i:06d}" for i in range(3)}
    for r in records:
        im = regenerate(r.image_id)
        e = im.expressions[int(r.sample_id.rsplit("-e", 1)[1])]
        assert r.text == e.text and r.expr_type == e.expr_type
        assert r.box_xyxy.dtype == np.float32 and r.box_xyxy.shape == (4,)
        np.testing.assert_array_equal(r.box_xyxy, im.objects[e.target].box)
    with pytest.raises(KeyError, match=r"split 'testA' not found.*\['train', 'val'\]"):
        load_split(world, "testA")


def test_dataset_returns_the_exact_pixels_through_the_transform(world):
    calls = []

    def transform(image, box, text):
        calls.append(image.mode)
        return torch.from_numpy(np.asarray(image).copy()), torch.from_numpy(box), text

    ds = GroundingDataset(world, "train", transform)
    assert len(ds) == len(load_split(world, "train"))
    for i in range(len(ds)):
        (pixels, box, text), sample_id = ds[i]
        r = ds.records[i]
        assert sample_id == r.sample_id and text == r.text
        assert torch.equal(box, torch.from_numpy(r.box_xyxy))
        expected = np.asarray(regenerate(r.image_id).image)  # PNG is lossless
        assert np.array_equal(pixels.numpy(), expected)
    assert set(calls) == {"RGB"}
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    (pixels, boxes, texts), ids = batch
    assert pixels.shape == (4, 96, 96, 3) and boxes.shape == (4, 4) and len(ids) == 4


def test_cache_is_bounded_and_hands_out_copies(world):
    ds = GroundingDataset(world, "train", cache_size=2)
    for i in range(len(ds)):
        (image, box, _), _ = ds[i]
        image.putpixel((0, 0), (1, 2, 3))  # a transform scribbling on its input...
        box[:] = -1
        assert len(ds._cache) <= 2
    (image, box, _), _ = ds[len(ds) - 1]
    assert image.getpixel((0, 0)) != (1, 2, 3)  # ...does not reach the cache or the records
    assert (box >= 0).all()
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a pickled copy
    assert len(clone) == len(ds)


def _copy_world(src, dst):
    for name in ("samples", "images"):
        storage.write_table(storage.read_table(storage.join(src, name)), storage.join(dst, name))


def test_bad_rows_are_named(world, tmp_path):
    bad = str(tmp_path / "bad")
    _copy_world(world, bad)
    samples = storage.read_table(storage.join(bad, "samples"))
    idx = samples.column_names.index("image_id")
    orphan = samples.set_column(idx, "image_id",
                                pa.array(["nowhere"] + samples.column("image_id").to_pylist()[1:]))
    storage.write_table(orphan, storage.join(bad, "samples"))
    with pytest.raises(DatasetError, match=r"row 0 \(sample syn-s9-train-000000-e0\).*'nowhere'"):
        GroundingDataset(bad, "train")

    boxes = samples.column("box").to_pylist()
    boxes[2] = [50.0, 0.0, 10.0, 5.0]
    idx = samples.column_names.index("box")
    storage.write_table(samples.set_column(idx, "box", pa.array(boxes, BOX_TYPE)),
                        storage.join(bad, "samples"))
    with pytest.raises(SchemaError, match=r"(?s)samples.*'box', row 2"):
        load_split(bad, "train")


def test_unreadable_image_names_its_file(tmp_path):
    root = str(tmp_path / "w")
    syn.write_world(root, CFG, seed=1, splits={"train": 2}, progress=False)
    (tmp_path / "w" / "files" / "syn-s1-train-000001.png").write_bytes(b"not a png")
    ds = GroundingDataset(root, "train")
    ds[0]
    last = [i for i, r in enumerate(ds.records) if r.image_id.endswith("000001")][0]
    with pytest.raises(DatasetError, match=r"syn-s1-train-000001.*files/syn-s1-train-000001.png"):
        ds[last]


def test_world_on_an_object_store_round_trips():
    """fsspec's in-memory store stands in for S3: no rename, publication by copy + delete."""
    import fsspec

    root = "memory://clipvg-test-world"
    try:
        syn.write_world(root, CFG, seed=2, splits={"val": 2}, progress=False)
        ds = GroundingDataset(root, "val")
        (image, box, text), sample_id = ds[0]
        assert image.size == (96, 96) and sample_id.startswith("syn-s2-val-000000-e")
        fs = fsspec.filesystem("memory")
        assert not [p for p in fs.find("/clipvg-test-world") if ".tmp-" in p]
    finally:
        fsspec.filesystem("memory").rm("/clipvg-test-world", recursive=True)
