"""The metrics of a run as ``metrics.jsonl`` and TensorBoard event files, on any storage URI.

:class:`RunLog` writes into a local folder (fast appends; the TensorBoard writer needs a real
file) and :meth:`RunLog.sync` publishes that folder's files under the run's URI - local path
or ``s3://`` alike - with the atomic writes of :mod:`clipvg.data.storage`, so a reader of
``<run_uri>/metrics.jsonl`` always sees a whole file::

    <run_uri>/metrics.jsonl               one JSON object per line, "kind": "step" | "epoch"
    <run_uri>/tensorboard/events.out...   scalars: train/loss, train/lr, val/acc, val/acc/<type>

Scalars are logged against the *global step* - the epoch records too (at the step where the
epoch ended) - so train and validation curves share one x-axis, and a resumed run can purge
the stale tail of both with a single TensorBoard purge step.

**Resume.** A run restarted from a checkpoint (after a failure, or a rerun of the same run)
passes ``resume_step``/``resume_epoch`` of that checkpoint: the existing ``metrics.jsonl`` is
downloaded without the records after that point (so every epoch appears exactly once in the
final file), the existing event files are downloaded, and the new event file starts with a
TensorBoard purge at ``resume_step + 1``, which makes TensorBoard hide the stale events the
crashed attempt wrote after the checkpoint. A fresh run (neither given) replaces the run's
``metrics.jsonl`` and purges from step 0, so leftovers of an earlier attempt never show.
"""

from __future__ import annotations

import json
import posixpath
import time
from pathlib import Path
from typing import Any

from clipvg.data import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("kind", "step", "epoch", "time")  # record fields that are not scalars


class RunLog:
    """Step and epoch records of one run (rank 0 only), published with :meth:`sync`.

    Args:
        run_uri: the run's folder on storage (``runs/x``, ``s3://bucket/runs/x``); it may be
            ``local_dir`` itself, then :meth:`sync` only flushes.
        local_dir: this log's scratch folder; its ``metrics.jsonl`` and ``tensorboard/`` are
            replaced (from the run, when resuming).
        storage_options: fsspec options for ``run_uri`` (:func:`storage.options_from_config`).
        resume_step: global step of the checkpoint the run resumes from; step records after it
            are dropped and TensorBoard purges from ``resume_step + 1``.
        resume_epoch: completed epochs of that checkpoint; epoch records after it are dropped.
    """

    def __init__(self, run_uri: str, local_dir: str | Path,
                 storage_options: dict | None = None, resume_step: int | None = None,
                 resume_epoch: int | None = None):
        self.run_uri = run_uri.rstrip("/")
        self.local_dir = Path(local_dir).resolve()
        self.options = dict(storage_options or {})
        self._metrics = self.local_dir / METRICS_FILE
        self._tb_dir = self.local_dir / TENSORBOARD_DIR
        fs, path = storage.filesystem(self.run_uri, **self.options)
        # Publishing a folder onto itself would replace files that are open for appending.
        self._in_place = storage.is_local(fs) and Path(path).resolve() == self.local_dir
        self._synced: dict[str, tuple[int, int]] = {}  # event file -> (size, mtime) uploaded
        self._last_step = resume_step or 0
        self._closed = False
        self._tb_dir.mkdir(parents=True, exist_ok=True)

        resuming = resume_step is not None or resume_epoch is not None
        old = self._remote_records() if resuming else []
        kept = [r for r in old if _keep(r, resume_step, resume_epoch)]
        # Written whole (not appended) so the local file equals the published one from now on.
        self._metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if not self._in_place:
            for stale in self._tb_dir.iterdir():  # scratch leftovers of an earlier attempt
                if stale.is_file():
                    stale.unlink()
            if resuming:
                self._download_events()
        self._writer = _EventFile(self._tb_dir, resume_step + 1 if resume_step is not None else 0)

    # -------------------------------------------------------------------------- records
    def step(self, record: dict) -> None:
        """A training step: ``{"step", "epoch", "loss", "l1", "giou", "lr", "samples_per_s",
        optional "mfu"}``; every numeric field becomes the scalar ``train/<field>``."""
        step = int(record["step"])
        self._last_step = max(self._last_step, step)
        self._append({"kind": "step", **record})
        for key, value in record.items():
            if key not in _RESERVED and _is_number(value):
                self._writer.add(f"train/{key}", value, step)

    def epoch(self, record: dict) -> None:
        """An evaluated epoch: ``{"epoch", "train_loss", "val": {"acc", "per_type", "loss",
        ...}, optional "step"}`` (``step`` = global step at the end of the epoch; the last
        logged step when absent).

        Scalars: ``val/acc``, ``val/acc/<type>``, ``val/<other numeric field>``,
        ``epoch/<top-level numeric field>`` (e.g. ``epoch/train_loss``) and ``train/epoch``.
        """
        step = int(record.get("step", self._last_step))
        self._last_step = max(self._last_step, step)
        self._append({"kind": "epoch", **record})
        add = self._writer.add
        add("train/epoch", int(record["epoch"]), step)
        for key, value in record.items():
            if key not in _RESERVED and _is_number(value):
                add(f"epoch/{key}", value, step)
        val = record.get("val") or {}
        for key, value in val.items():
            if _is_number(value):
                add(f"val/{key}", value, step)
        for group, value in (val.get("per_type") or {}).items():
            if _is_number(value):
                add(f"val/acc/{group}", value, step)

    def _append(self, record: dict) -> None:
        if self._closed:
            raise RuntimeError(f"RunLog of {self.run_uri} is closed")
        record.setdefault("time", round(time.time(), 3))
        with self._metrics.open("a") as f:  # reopened per record: cheap, and never half-buffered
            f.write(json.dumps(record) + "\n")

    # -------------------------------------------------------------------------- publication
    def sync(self) -> None:
        """Publish ``metrics.jsonl`` and the changed event files under ``run_uri``."""
        if not self._closed:
            self._writer.flush()
        if self._in_place:
            return
        storage.write_bytes(self._metrics.read_bytes(), storage.join(self.run_uri, METRICS_FILE),
                            **self.options)
        for path in sorted(self._tb_dir.iterdir()):
            stat = path.stat()
            if not path.is_file() or self._synced.get(path.name) == (stat.st_size, stat.st_mtime_ns):
                continue  # event files only grow: an unchanged one is already published
            target = storage.join(self.run_uri, TENSORBOARD_DIR, path.name)
            storage.write_bytes(path.read_bytes(), target, **self.options)
            self._synced[path.name] = (stat.st_size, stat.st_mtime_ns)

    def close(self) -> None:
        """Flush, publish a last time and close the writer (a second call does nothing)."""
        if self._closed:
            return
        self._writer.close()
        self._closed = True
        self.sync()

    def abandon(self) -> None:
        """Close the local files without publishing (an interrupted run: what was published at
        the last :meth:`sync` stays; a resumed run drops the records after its checkpoint)."""
        if not self._closed:
            self._writer.close()
            self._closed = True

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------- resume
    def _remote_records(self) -> list[dict]:
        if self._in_place:
            return _parse(self._metrics.read_text(), str(self._metrics)) if self._metrics.exists() else []
        uri = storage.join(self.run_uri, METRICS_FILE)
        if not storage.exists(uri, **self.options):
            return []
        return read_metrics(self.run_uri, **self.options)

    def _download_events(self) -> None:
        fs, path = storage.filesystem(storage.join(self.run_uri, TENSORBOARD_DIR), **self.options)
        fs.invalidate_cache(path)  # s3fs caches listings; another process wrote these files
        if not fs.isdir(path):
            return
        for remote in sorted(fs.ls(path, detail=False)):
            name = posixpath.basename(remote.rstrip("/"))
            if name.startswith((".", "_")) or fs.isdir(remote):  # a crashed writer's temp file
                continue
            with fs.open(remote, "rb") as f:
                local = self._tb_dir / name
                local.write_bytes(f.read())
            stat = local.stat()
            self._synced[name] = (stat.st_size, stat.st_mtime_ns)  # already on storage


class _EventFile:
    """One TensorBoard event file, written synchronously.

    Not tensorboardX's ``SummaryWriter``: it hands events to a background thread through a
    queue and its ``flush()`` does not wait for that queue, so a :meth:`RunLog.sync` right after
    an epoch could publish a file without that epoch - and after a crash those events would be
    lost for good. Writing in the caller's thread makes ``flush()`` exact; the file format and
    the scalar protos are tensorboardX's own.
    """

    def __init__(self, folder: Path, purge_step: int):
        from tensorboardX.event_file_writer import EventsWriter  # only loggers need tensorboardX
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import scalar

        self._event, self._scalar = Event, scalar
        # The suffix keeps names distinct and increasing even for two files started within one
        # second (the default name has whole seconds only): TensorBoard reads a folder's files in
        # name order, and a purge applies to the events of the files read before it.
        self._file = EventsWriter(str(folder / "events"), f".{time.time_ns()}")
        # A START session log at step s makes TensorBoard hide earlier events with step >= s
        # (what SummaryWriter(purge_step=s) writes too).
        self._file.write_event(Event(wall_time=time.time(), step=purge_step,
                                     session_log=SessionLog(status=SessionLog.START)))

    def add(self, tag: str, value: float, step: int) -> None:
        self._file.write_event(self._event(wall_time=time.time(), step=step,
                                           summary=self._scalar(tag, float(value))))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.flush()
        self._file.close()


def read_metrics(run_uri: str, **storage_options: Any) -> list[dict]:
    """The records of ``<run_uri>/metrics.jsonl`` in order (FileNotFoundError when absent)."""
    uri = storage.join(run_uri, METRICS_FILE)
    if not storage.exists(uri, **storage_options):
        raise FileNotFoundError(f"no {METRICS_FILE} under {run_uri}")
    return _parse(storage.read_bytes(uri, **storage_options).decode("utf-8"), uri)


def _parse(text: str, where: str) -> list[dict]:
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}, line {n}: not a JSON record ({e})") from None
    return records


def _keep(record: dict, resume_step: int | None, resume_epoch: int | None) -> bool:
    """Whether a record of the earlier attempt lies at or before the resumed checkpoint."""
    kind = record.get("kind", "epoch" if "val" in record else "step")
    if kind == "step" and resume_step is not None:
        return int(record.get("step", 0)) <= resume_step
    if kind == "epoch" and resume_epoch is not None:
        return int(record.get("epoch", 0)) <= resume_epoch
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
