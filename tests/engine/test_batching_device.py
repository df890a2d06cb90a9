"""The local loader with ``data.augment.backend: device``: same batches as the CPU backend (keys,
dtypes, ids, boxes, tokens exactly; pixels bit for bit)."""

from __future__ import annotations

import torch

from clipvg.config import Config, from_dict
from clipvg.engine.batching import DrawnSample, build_loader, ensure_dataset
from clipvg.engine.steps import BATCH_KEYS


def _cfg(tmp_path, backend: str) -> Config:
    return from_dict(Config, {
        "data": {"synth": {"image_size": 64, "train_images": 6, "val_images": 2, "test_images": 2},
                 "augment": {"blur": True, "backend": backend}},
        "model": {"image_size": 64}, "train": {"batch_size": 4, "seed": 3},
        "storage": {"root": str(tmp_path)}})


def test_device_backend_batches_equal_the_cpu_backends(tmp_path):
    batches = {}
    for backend in ("cpu", "device"):
        cfg = _cfg(tmp_path, backend)
        loader = build_loader(cfg, ensure_dataset(cfg), "train", train=True)
        item = loader.dataset[0][0]
        assert isinstance(item, DrawnSample) == (backend == "device")  # each path is really taken
        loader.dataset.transform.rng.seed(3)  # the item above drew from the loader's stream
        batches[backend] = list(loader)
    cpu, dev = batches["cpu"], batches["device"]
    assert len(cpu) == len(dev) > 1
    for a, d in zip(cpu, dev):
        assert tuple(a) == tuple(d) and set(a) == set(BATCH_KEYS)
        for key in ("pixel_mask", "tokens", "token_mask", "target"):
            assert a[key].dtype == d[key].dtype and torch.equal(a[key], d[key]), key
        assert a["sample_id"] == d["sample_id"] and a["image_id"] == d["image_id"]
        assert a["image"].dtype == d["image"].dtype == torch.float32
        assert torch.equal(a["image"], d["image"])  # bit-exact: clipvg.data.augment_torch
