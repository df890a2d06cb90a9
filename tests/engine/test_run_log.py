"""RunLog: metrics.jsonl + TensorBoard events published to a folder or S3, and resumed."""

import posixpath
import struct

import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog

from clipvg.data import storage
from clipvg.engine.run_log import RunLog, read_metrics


@pytest.fixture(params=["local", "s3"])
def run(request, tmp_path):
    """(run_uri, storage_options) on a local folder or on the moto S3 server."""
    if request.param == "local":
        return str(tmp_path / "run"), {}
    s3 = request.getfixturevalue("s3")
    return s3.uri("runlog"), s3.options


def events(data: bytes) -> list[Event]:
    """Parse TFRecord framing: u64 length, u32 crc, payload, u32 crc (crcs not checked)."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        out.append(Event.FromString(data[pos + 12:pos + 12 + n]))
        pos += 12 + n + 4
    return out


def scalars(run_uri: str, options: dict) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them: files in name order, and a START
    session log at step s hides every earlier-read event with step >= s."""
    fs, path = storage.filesystem(storage.join(run_uri, "tensorboard"), **options)
    seen: dict[str, list] = {}
    for name in sorted(posixpath.basename(p) for p in fs.ls(path, detail=False)):
        for ev in events(fs.cat_file(posixpath.join(path, name))):
            if ev.HasField("session_log") and ev.session_log.status == SessionLog.START:
                seen = {t: [(s, v) for s, v in pts if s < ev.step] for t, pts in seen.items()}
            for value in ev.summary.value:
                seen.setdefault(value.tag, []).append((ev.step, value.simple_value))
    return seen


def write_epochs(log: RunLog, epochs, steps_per_epoch: int = 2, acc_offset: float = 0.0) -> None:
    for epoch in epochs:
        for i in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + i + 1
            log.step({"step": step, "epoch": epoch - 1, "loss": 1.0 / step, "l1": 0.5, "giou": 0.5,
                      "lr": 1e-4, "samples_per_s": 100.0 + step, "mfu": 0.25})
        acc = 0.1 * epoch + acc_offset
        log.epoch({"epoch": epoch, "step": epoch * steps_per_epoch, "train_loss": 1.0 / epoch,
                   "val": {"acc": acc, "total": 10, "loss": 0.5,
                           "per_type": {"color": acc, "spatial": acc / 2}}})


def test_records_and_scalars_are_published(run, tmp_path):
    uri, options = run
    log = RunLog(uri, tmp_path / "scratch", options)
    write_epochs(log, [1])
    log.sync()
    records = read_metrics(uri, **options)
    assert [r["kind"] for r in records] == ["step", "step", "epoch"]
    assert records[1]["loss"] == 0.5 and records[2]["val"]["per_type"]["color"] == pytest.approx(0.1)
    tags = scalars(uri, options)
    assert tags["train/loss"] == [(1, 1.0), (2, 0.5)]
    assert tags["train/mfu"] == [(1, 0.25), (2, 0.25)]
    assert tags["val/acc"] == [(2, pytest.approx(0.1))]
    assert tags["val/acc/spatial"] == [(2, pytest.approx(0.05))]
    assert tags["epoch/train_loss"] == [(2, 1.0)] and "val/total" in tags
    write_epochs(log, [2])
    log.close()
    log.close()  # idempotent
    assert [r["epoch"] for r in read_metrics(uri, **options) if r["kind"] == "epoch"] == [1, 2]
    assert len(scalars(uri, options)["val/acc"]) == 2
    fs, path = storage.filesystem(uri, **options)
    assert not [p for p in fs.find(path) if "/.tmp-" in p]  # atomic writes left no temp files


def test_resume_keeps_every_epoch_once(run, tmp_path):
    uri, options = run
    first = RunLog(uri, tmp_path / "attempt1", options)
    write_epochs(first, [1, 2, 3])
    first.sync()  # the attempt dies after epoch 3 was logged, but its last checkpoint is epoch 2
    resumed = RunLog(uri, tmp_path / "attempt2", options, resume_step=4, resume_epoch=2)
    write_epochs(resumed, [3], acc_offset=0.5)
    resumed.close()

    records = read_metrics(uri, **options)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2, 3]
    assert [r["step"] for r in records if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["val"]["acc"] == pytest.approx(0.8)  # the resumed attempt's epoch 3
    tags = scalars(uri, options)
    assert tags["val/acc"] == [(2, pytest.approx(0.1)), (4, pytest.approx(0.2)), (6, pytest.approx(0.8))]
    assert [s for s, _ in tags["train/loss"]] == [1, 2, 3, 4, 5, 6]
    fs, path = storage.filesystem(storage.join(uri, "tensorboard"), **options)
    assert len(fs.ls(path, detail=False)) == 2  # the first attempt's file kept, plus the new one


def test_fresh_start_replaces_an_earlier_attempt(tmp_path):
    uri = str(tmp_path / "run")
    old = RunLog(uri, tmp_path / "a")
    write_epochs(old, [1, 2])
    old.close()
    new = RunLog(uri, tmp_path / "b")  # no checkpoint to resume from: start over
    write_epochs(new, [1], acc_offset=0.3)
    new.close()
    assert [r["epoch"] for r in read_metrics(uri) if r["kind"] == "epoch"] == [1]
    assert scalars(uri, {})["val/acc"] == [(2, pytest.approx(0.4))]


def test_logging_in_place(tmp_path):
    """run_uri == local_dir (a local run): sync only flushes, resume filters the file itself."""
    folder = tmp_path / "run"
    log = RunLog(str(folder), folder)
    write_epochs(log, [1, 2])
    log.close()
    log = RunLog(str(folder), folder, resume_step=2, resume_epoch=1)
    write_epochs(log, [2])
    log.close()
    assert [r["epoch"] for r in read_metrics(str(folder)) if r["kind"] == "epoch"] == [1, 2]
    assert [s for s, _ in scalars(str(folder), {})["val/acc"]] == [2, 4]
    with pytest.raises(RuntimeError, match="closed"):
        log.step({"step": 9, "loss": 1.0})


def test_read_metrics_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        read_metrics(str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text('{"kind": "step"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        read_metrics(str(tmp_path))
