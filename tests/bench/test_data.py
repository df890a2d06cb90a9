"""The data benchmark runs end to end on a tiny world (numbers are not checked here: speed is
measured by `clipvg benchmark data`, never by tests)."""

import argparse
import sys

from clipvg.cli import main
from clipvg.data import storage
from clipvg.bench import data as bench_data
from clipvg.bench.cli import _report


def test_bench_world_has_the_asked_shape_and_every_mode_streams_every_sample(ray_local, tmp_path):
    uri = str(tmp_path / "w")
    world = bench_data.BenchWorld(images=5, per_image=3, width=64, height=48)
    manifest = bench_data.write_bench_world(uri, world)
    assert manifest["validation"]["accepted"] == 15 and manifest["validation"]["quarantined"] == 0
    images = storage.read_table(storage.join(uri, "images"))
    assert set(images.column("width").to_pylist()) == {64} and images.num_rows == 5
    ceiling = bench_data.pil_ceiling(uri, repeats=1)
    assert ceiling["images"] == 5 and ceiling["images_per_s"] > 0
    results = {}
    for name, per_sample, train, materialize in [("fan_out_eval", False, False, False),
                                                 ("per_sample_eval", True, False, False),
                                                 ("fan_out_train_cpu_batches", False, True, True)]:
        r = bench_data.stream_rate(uri, per_sample=per_sample, train=train, cpus=2,
                                   materialize=materialize, epochs=1, batch_size=4)
        assert r["samples"] == 15 and len(r["pass_seconds"]) == 1
        results[name] = r
    for backend in ("cpu", "device"):  # the training stream as delivered, per augmentation backend
        r = bench_data.stream_rate(uri, per_sample=False, train=True, cpus=2, materialize=False,
                                   epochs=1, batch_size=4, backend=backend)
        assert r["samples"] == 15
        results[f"train_{backend}_backend_stream"] = r
    applied = bench_data.apply_rate(uri, limit=2, batch_size=4, repeats=1)
    assert applied["images"] == 2 and applied["samples"] == 6
    assert set(applied["samples_per_s"]) == {"cpu", "device"}
    args = argparse.Namespace(cpus=2)
    report = _report(args, world, ceiling, {"local": results}, applied=applied)
    assert report["summary"]["fan_out_vs_per_sample"] > 0 and report["markdown"].startswith("| ")
    assert set(report["summary"]["train_stream_per_core"]) == {"cpu", "device"}
    assert "device backend" in report["markdown"] and report["apply"] is applied


def test_benchmark_refuses_bad_numbers(capsys):
    assert main(["benchmark", "data", "--images", "0", "--s3", "none"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_benchmark_s3_moto_without_moto_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "moto.server", None)  # as if moto were not installed
    assert main(["benchmark", "data", "--images", "1", "--s3", "moto", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--s3 moto needs moto" in err
