"""Decode-once streaming for the device augmentation backend: one image row per image (pixels
once + drawn params per slot), applied on the consumer; same samples as the CPU backend."""

import dataclasses

import pytest
import torch

from clipvg.config import AugmentConfig, SynthConfig
from clipvg.data.fanout import FanOutSpec
from clipvg.distributed import streaming as st
from clipvg.engine.steps import BATCH_KEYS
from clipvg.sources.synthetic.scenes import write_world

SIZE, CONTEXT = 64, 24
WORLD = SynthConfig(image_size=80, train_images=6, val_images=3, test_images=3)
CPU = FanOutSpec(size=SIZE, context_length=CONTEXT, train=True, seed=5,
                 augment=AugmentConfig(crop=True, color=True, blur=True))
DEVICE = dataclasses.replace(CPU, augment=dataclasses.replace(CPU.augment, backend="device"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("world") / "w")
    write_world(uri, WORLD, seed=3)
    return uri


def _stream(plan, spec):
    report = st.StreamReport()
    ds = st.build_dataset(plan, spec, num_cpus=0.5)
    batches = list(st.iter_model_batches(ds, plan.index(), batch_size=8, report=report, keep_ids=True))
    return batches, report


def test_device_backend_streams_image_rows_and_gives_the_cpu_backends_samples(ray_local, world):
    plan = st.plan_split(world, "train", CPU)
    rows = st.build_dataset(plan, DEVICE, num_cpus=0.5).take_all()
    assert len(rows) == plan.num_images  # one row per image: pixels shipped once
    assert all(r["pixels"].shape == (80, 80, 3) for r in rows)
    cpu, cpu_report = _stream(plan, CPU)
    dev, dev_report = _stream(plan, DEVICE)
    assert not cpu_report.failed and not dev_report.failed
    assert all(set(b) == set(BATCH_KEYS) for b in cpu + dev)
    a = {sid: (b, i) for b in cpu for i, sid in enumerate(b["sample_id"])}
    d = {sid: (b, i) for b in dev for i, sid in enumerate(b["sample_id"])}
    assert a.keys() == d.keys() and len(a) == plan.num_samples
    for sid, (ba, i) in a.items():
        bd, j = d[sid]
        for key in ("pixel_mask", "tokens", "token_mask", "target"):
            assert torch.equal(ba[key][i], bd[key][j]), key
        assert ba["image_id"][i] == bd["image_id"][j] and ba["expr_type"][i] == bd["expr_type"][j]
        assert bd["image"].dtype == torch.float32
        assert torch.equal(ba["image"][i], bd["image"][j])  # bit-exact: clipvg.data.augment_torch
