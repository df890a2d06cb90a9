"""Ray Data streaming: same tensors as the per-sample local path, every eval row exactly once
across consumers, packed images, S3, and failures reported with their ids."""

import threading

import numpy as np
import pyarrow as pa
import pytest
import torch

from clipvg.config import AugmentConfig, SynthConfig
from clipvg.data import storage
from clipvg.data.dataset import GroundingDataset
from clipvg.data.fanout import FanOutSpec
from clipvg.sources.synthetic.scenes import write_world
from clipvg.data.text import tokenize
from clipvg.data.transforms import eval_transform
from clipvg.distributed import streaming as st
from clipvg.engine.steps import BATCH_KEYS

SIZE, CONTEXT = 64, 24
WORLD = SynthConfig(image_size=80, train_images=6, val_images=7, test_images=3)
EVAL = FanOutSpec(size=SIZE, context_length=CONTEXT)
TRAIN = FanOutSpec(size=SIZE, context_length=CONTEXT, train=True, seed=5,
                   augment=AugmentConfig(crop=True, color=True))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("world") / "w")
    write_world(uri, WORLD, seed=3)
    return uri


def stream(plan, spec, batch_size=5, **kw):
    report = st.StreamReport()
    batches = list(st.iter_model_batches(st.build_dataset(plan, spec, num_cpus=0.5, **kw),
                                         plan.index(), batch_size=batch_size, report=report,
                                         keep_ids=True))
    return batches, report


def by_id(batches) -> dict[str, dict]:
    rows = {}
    for b in batches:
        for i, sid in enumerate(b["sample_id"]):
            rows[sid] = {k: b[k][i] for k in ("image", "pixel_mask", "tokens", "token_mask", "target")}
    return rows


def test_eval_stream_matches_the_per_sample_local_path(ray_local, world):
    plan = st.plan_split(world, "val", EVAL)
    batches, report = stream(plan, EVAL)
    rows = by_id(batches)
    assert all(set(b) == set(BATCH_KEYS) for b in batches)  # the batch contract of engine/steps.py
    local = GroundingDataset(world, "val")
    assert len(rows) == len(local) == report.rows and report.failed == []
    for k, record in enumerate(local.records):
        (image, box, text), sid = local[k]
        ref = eval_transform(image, np.trunc(box), text.lower(), size=SIZE)  # official int boxes
        tok = tokenize([ref.text], context_length=CONTEXT)
        got = rows[sid]
        assert torch.equal(got["image"], ref.image), sid
        assert torch.equal(got["pixel_mask"], ref.pixel_mask.to(torch.int64))
        assert torch.equal(got["target"], ref.box)
        assert torch.equal(got["tokens"], tok.tokens[0]) and torch.equal(got["token_mask"], tok.token_mask[0])


def test_per_sample_decoding_gives_the_same_rows_as_fan_out(ray_local, world):
    fan = by_id(stream(st.plan_split(world, "val", EVAL), EVAL)[0])
    per = by_id(stream(st.plan_split(world, "val", EVAL, per_sample=True), EVAL)[0])
    assert fan.keys() == per.keys()
    for sid in fan:
        assert all(torch.equal(fan[sid][k], per[sid][k]) for k in fan[sid])


def test_two_consumers_see_every_eval_row_exactly_once(ray_local, world):
    plan = st.plan_split(world, "val", EVAL)
    assert plan.num_samples % 2 == 1 or plan.num_samples % 3  # rows do not divide evenly
    ds = st.build_dataset(plan, EVAL, num_cpus=0.5, groups_per_block=2, groups_per_call=1)
    shards = st.split_for_consumers(ds, 2)
    reports = [st.StreamReport(), st.StreamReport()]

    def consume(k):
        for _ in st.iter_model_batches(shards[k], plan.index(), batch_size=4, report=reports[k],
                                       keep_ids=True):
            pass

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    seen = reports[0].sample_ids + reports[1].sample_ids
    expected = plan.samples.column("sample_id").to_pylist()
    assert sorted(seen) == sorted(expected)  # nothing dropped, nothing twice
    st.check_complete(plan, reports)


def test_check_complete_catches_a_lost_row(ray_local, world):
    plan = st.plan_split(world, "val", EVAL)
    ids = plan.samples.column("sample_id").to_pylist()
    st.check_complete(plan, [st.StreamReport(rows=len(ids), sample_ids=list(ids))])
    with pytest.raises(RuntimeError, match="expected"):
        st.check_complete(plan, [st.StreamReport(rows=len(ids) - 1, sample_ids=ids[1:])])
    with pytest.raises(RuntimeError, match="duplicate"):
        st.check_complete(plan, [st.StreamReport(sample_ids=ids + ids[:1])])


def test_train_augmentation_is_reproducible_per_sample_and_changes_with_epoch(ray_local, world):
    plan = st.plan_split(world, "train", TRAIN)
    a = by_id(stream(plan, TRAIN, batch_size=8)[0])
    b = by_id(stream(plan, TRAIN, batch_size=3)[0])  # other batching, other order
    c = by_id(stream(plan, FanOutSpec(**{**TRAIN.__dict__, "epoch": 1}), batch_size=8)[0])
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[s]["image"], b[s]["image"]) and torch.equal(a[s]["target"], b[s]["target"])
               for s in a)
    assert sum(not torch.equal(a[s]["target"], c[s]["target"]) for s in a) > len(a) // 2


def test_packed_images_stream_like_files(ray_local, tmp_path):
    files, packed = str(tmp_path / "files"), str(tmp_path / "packed")
    write_world(files, WORLD, seed=4)
    write_world(packed, WORLD, seed=4, embed_images=True)
    assert storage.has_values(storage.join(packed, "images"), "bytes")
    assert not storage.has_values(storage.join(files, "images"), "bytes")
    plan = st.plan_split(packed, "val", EVAL)
    assert plan.packed_parts
    got, want = by_id(stream(plan, EVAL)[0]), by_id(stream(st.plan_split(files, "val", EVAL), EVAL)[0])
    assert got.keys() == want.keys()
    assert all(torch.equal(got[s]["image"], want[s]["image"]) for s in got)


def test_world_on_s3_streams_back_and_a_deleted_object_is_reported(ray_local, s3):
    uri = s3.uri("stream")
    write_world(uri, WORLD, seed=6, **s3.options)
    plan = st.plan_split(uri, "val", EVAL, **s3.options)
    images = storage.read_table(storage.join(uri, "images"), **s3.options)
    victim = plan.inputs.column("image_id")[0].as_py()
    rel = dict(zip(images.column("image_id").to_pylist(), images.column("uri").to_pylist()))[victim]
    assert storage.remove(storage.join(uri, rel), **s3.options)  # gone after planning
    batches, report = stream(plan, EVAL)
    lost = [sid for sid, iid in zip(plan.samples.column("sample_id").to_pylist(),
                                    plan.samples.column("image_id").to_pylist()) if iid == victim]
    assert sorted(f[0] for f in report.failed) == sorted(lost) and lost
    assert all(f[1] == victim and "FileNotFoundError" in f[2] for f in report.failed)
    assert report.rows == plan.num_samples - len(lost)
    assert "could not be read" in report.summary()
    st.check_complete(plan, [report])  # failed rows count as seen: reported, not lost


def test_an_image_missing_from_the_images_table_is_reported(ray_local, tmp_path):
    uri = str(tmp_path / "w")
    write_world(uri, WORLD, seed=7)
    images = storage.read_table(storage.join(uri, "images"))
    dropped = images.column("image_id")[images.num_rows - 1].as_py()  # a test-split image
    storage.write_table(images.slice(0, images.num_rows - 1), storage.join(uri, "images"))
    plan = st.plan_split(uri, "test", EVAL)
    assert plan.unknown_images == [dropped]
    _, report = stream(plan, EVAL)
    assert report.failed and {f[1] for f in report.failed} == {dropped}
    assert "images table" in report.failed[0][2]
    st.check_complete(plan, [report])


def test_plan_refuses_an_unknown_split(tmp_path, world):
    with pytest.raises(KeyError, match="nope"):
        st.plan_split(world, "nope")
