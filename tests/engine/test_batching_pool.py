"""The train loader over a curriculum pool, and fixed-size epochs (train.samples_per_epoch)."""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc

from clipvg.config import Config, PoolEntry, from_dict
from clipvg.data import storage
from clipvg.engine.batching import build_loader, ensure_dataset


def _cfg(tmp_path, **train) -> Config:
    return from_dict(Config, {
        "data": {"synth": {"image_size": 64, "train_images": 6, "val_images": 2, "test_images": 2},
                 "augment": {"scale": False, "crop": False, "color": False}},
        "model": {"image_size": 64}, "train": {"batch_size": 4, **train},
        "storage": {"root": str(tmp_path)}})


def test_pool_loader_reads_the_pool_and_fixed_epochs_repeat_it(tmp_path):
    cfg = _cfg(tmp_path, samples_per_epoch=23)
    uri = ensure_dataset(cfg)
    gt = storage.read_table(f"{uri}/samples", filter=pc.field("split") == "train")
    part = gt.slice(0, 5)
    storage.write_table(part, str(tmp_path / "pool"))
    cfg.data.train_pool = [PoolEntry(samples=str(tmp_path / "pool"))]
    loader = build_loader(cfg, uri, "train", train=True)
    ids = [sid for b in loader for sid in b["sample_id"]]
    assert len(loader) == 23 // 4 and len(ids) == 20
    counts = Counter(ids)
    assert set(counts) == set(part.column("sample_id").to_pylist())
    assert all(c == 4 for c in counts.values())  # four full reshuffled passes over 5 samples
