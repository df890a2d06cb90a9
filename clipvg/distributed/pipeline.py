"""``clipvg pipeline``: unsupervised CLIP-VG end to end, as stages over tables on storage.

    clipvg pipeline --config configs/demo.yaml
    clipvg pipeline --config configs/demo.yaml data.seed=7 storage.root=/tmp/run

Stages, in order (each writes ``<run>/stages/<stage>.json`` last; a rerun skips the stages
whose manifest matches, see :mod:`clipvg.curriculum.manifest`):

==============  ==============================================================  ======================
stage           what                                                            output
==============  ==============================================================  ======================
world           the dataset (the synthetic world unless ``data.uri``)            worlds/... or data.uri
pseudo:<s>      pseudo-labels of source s from per-image records (Ray Data)     pseudo/<s>/
measurers       one CLIP-VG per source on all its pseudo-labels (Ray Tune)      trials/<pool>-e<n>/
scores:<m>      every source scored by measurer m (Ray Data actor pool)         scores/<m>-on-<s>/
ssa             threshold search on the first source, its own measurer (Tune)   stages/ssa.json
msa             measurer / threshold / source-order search (Tune)               stages/msa.json
finals          w/o curriculum, SSA, w/o MSA, MSA, fully supervised             stages/finals.json
report          report.md, report.json and figures                              report/
==============  ==============================================================  ======================

Every training is cached by what it trains on (``trials/<pool key>-e<epochs>``), so a pool
tried by several searches trains once, and an interrupted training continues from its last
checkpoint on the rerun.

A rerun never replaces finished results silently: if a stage finished earlier with other
settings (its manifest key differs), the run is refused before any stage runs, unless
``--overwrite`` (then those stages, and everything after them, run again). The storage is
checked first (a wrong endpoint fails at once, naming it), and Ctrl-C ends with one line
naming the stages that were kept.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from clipvg.config import Config, PoolEntry, check_launcher, to_dict
from clipvg.curriculum import schedulers
from clipvg.curriculum.manifest import StageManifests, stage_key
from clipvg.curriculum.selection import subset_sizes
from clipvg.data import storage
from clipvg.data.pseudo_sources import pseudo_sources, source_rows
from clipvg.data.schema import SAMPLES, validate_table
from clipvg.distributed.local_ray import init_ray
from clipvg.distributed.pseudo_stage import generate_source
from clipvg.distributed.tuning import SequentialEvaluator, TuneEvaluator, search_orders
from clipvg.errors import InterruptedRun, Terminated, UserError, how_stopped

log = logging.getLogger("clipvg.pipeline")


def resolve_paths(cfg: Config) -> Config:
    """Absolute local paths: Tune trials and Ray workers do not run in this directory."""
    root = cfg.storage.root
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    model = cfg.model
    if model.weights and "://" not in model.weights and Path(model.weights).exists():
        model = dataclasses.replace(model, weights=str(Path(model.weights).resolve()))
    data = cfg.data
    if data.uri and "://" not in data.uri:
        data = dataclasses.replace(data, uri=str(Path(data.uri).resolve()))
    return dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, root=root), model=model, data=data)


def _msa_along(order: list, evaluate, *, samples, scores, measurers, h0, thresholds, refine_steps,
               own_measurer):
    """MSA along one order (module level: Tune ships it to the order trials)."""
    return schedulers.msa(order, samples, scores, measurers, h0, thresholds, evaluate,
                          refine_steps=refine_steps, own_measurer=own_measurer)


class StoppedAfter(Exception):
    """Raised after the stage ``Pipeline(until=...)`` names; caught by :meth:`Pipeline.run`."""


class Pipeline:
    """One pipeline run under ``storage.root/storage.run_name``; ``until`` = the last stage to
    run (e.g. ``scores:template``: pseudo-labels, measurers and one scoring, nothing after);
    ``overwrite``: rerun stages that finished earlier with other settings instead of refusing."""

    def __init__(self, cfg: Config, until: str | None = None, overwrite: bool = False):
        self.overwrite = overwrite
        self.current: str | None = None
        self._planning = False
        check_launcher(cfg, "pipeline")
        storage.check_uri(cfg.storage.root)  # before resolve_paths could treat it as a path
        self.cfg = resolve_paths(cfg)
        self.run_dir = self.cfg.run_dir
        self.options = storage.options_from_config(self.cfg.storage)
        self.manifests = StageManifests(self.run_dir, self.options)
        self.sources = list(self.cfg.curriculum.sources)
        self.keys: dict[str, str] = {}
        self.outputs: dict[str, dict] = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []
        c = self.cfg.curriculum
        self.trial_epochs = c.trial_epochs or self.cfg.train.epochs
        self.final_epochs = c.final_epochs or self.cfg.train.epochs
        self.measurer_epochs = c.measurer_epochs or self.final_epochs
        if until is not None and until not in self.stage_names():
            raise ValueError(f"--until {until!r} is not a stage of this pipeline; its stages: "
                             f"{', '.join(self.stage_names())}")
        self.until = until

    def stage_names(self) -> list[str]:
        return ["world", *(f"pseudo:{s}" for s in self.sources), "measurers",
                *(f"scores:{m}" for m in self.sources), "ssa", "msa", "finals", "report"]

    # ---------------------------------------------------------------- plumbing
    def uri(self, *parts: str) -> str:
        return storage.join(self.run_dir, *parts)

    def stage(self, name: str, config_part, inputs: list[str], fn: Callable[[], dict]) -> dict:
        """Run ``fn`` unless the stage finished with the same key; record its outputs."""
        ins = {i: self.keys[i] for i in inputs}
        key = stage_key(name, config_part, ins)
        self.keys[name] = key
        if self._planning:  # check_overwrite: keys only, nothing runs
            return {}
        self.current = name
        done = self.manifests.finished(name, key)
        if done is not None:
            print(f"[pipeline] {name}: finished earlier ({done['finished_at']}), skipped", flush=True)
            self.skipped.append(name)
            self.outputs[name] = done["outputs"]
            self._stop_if_last(name)
            return done["outputs"]
        print(f"[pipeline] {name}: running", flush=True)
        start = time.perf_counter()
        outputs = fn()
        seconds = time.perf_counter() - start
        self.manifests.write(name, key, config_part, ins, outputs, seconds)
        print(f"[pipeline] {name}: done in {seconds:.0f} s", flush=True)
        self.ran.append(name)
        self.outputs[name] = outputs
        self._stop_if_last(name)
        return outputs

    def _stop_if_last(self, name: str) -> None:
        if name == self.until:
            raise StoppedAfter(name)

    def base(self) -> Config:
        """The training config every stage starts from (data.uri = the world)."""
        world = self.outputs["world"]["uri"]
        return dataclasses.replace(self.cfg, data=dataclasses.replace(self.cfg.data, uri=world, train_pool=[]))

    def evaluator(self, epochs: int, sequential: bool = False):
        cls = SequentialEvaluator if sequential or self.cfg.curriculum.launcher == "in_process" else TuneEvaluator
        return cls(self.base(), trials_root=self.uri("trials"), tune_root=self.uri("tune"), epochs=epochs)

    def _training_part(self, epochs: int) -> dict:
        cfg = to_dict(self.cfg)
        per_epoch = self.cfg.curriculum.samples_per_epoch or self.cfg.train.samples_per_epoch
        return {"model": cfg["model"],
                "train": {**cfg["train"], "epochs": epochs, "resume": False, "samples_per_epoch": per_epoch},
                "data": {k: v for k, v in cfg["data"].items() if k not in ("uri", "train_pool")},
                "num_workers": self.cfg.scaling.num_workers}

    # ---------------------------------------------------------------- the graph
    def run(self) -> dict:
        """Run (or skip) every stage; the report stage's outputs, or ``{"stopped_after": name}``
        when ``until`` stopped the run early."""
        storage.check_access(self.run_dir, self.cfg.data.uri, **self.options)
        self.check_overwrite()
        try:
            return self._run_stages()
        except StoppedAfter as stop:
            return {"stopped_after": str(stop)}
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM (Terminated) under the CLI
            kept = [*self.skipped, *self.ran]
            what = (f"{len(kept)} finished stage(s) in {self.run_dir} ({', '.join(kept)})" if kept
                    else f"no finished stage in {self.run_dir}")
            raise InterruptedRun(f"{how_stopped(stop)} in stage {self.current}; kept: {what} (rerun the "
                                 f"same command to continue after them)",
                                 terminated=isinstance(stop, Terminated)) from None

    def planned_keys(self) -> dict[str, str]:
        """Every stage's key for this config, computed without running anything."""
        self._planning = True
        try:
            self._run_stages()
            return dict(self.keys)
        finally:
            self._planning, self.keys = False, {}

    def check_overwrite(self) -> list[str]:
        """The stages that finished earlier with other settings (a run would replace their
        outputs): refused with a :class:`UserError` unless ``overwrite``."""
        stale = []
        for name, key in self.planned_keys().items():
            uri = self.manifests.uri(name)
            if storage.exists(uri, **self.options):
                if storage.read_json(uri, **self.options).get("key") != key:
                    stale.append(name)
        if stale and not self.overwrite:
            raise UserError(f"{self.run_dir} holds a pipeline run whose stage(s) {', '.join(stale)} "
                            f"finished with other settings; a rerun would replace their outputs. "
                            f"Continue it with the settings it ran with, start another with a new "
                            f"storage.run_name, or replace them with --overwrite")
        return stale

    def _run_stages(self) -> dict:
        c = self.cfg.curriculum
        world_part = {"uri": self.cfg.data.uri, "seed": self.cfg.data.seed, "synth": to_dict(self.cfg.data.synth)}
        if self.cfg.data.uri is not None:  # a dataset changed in place (import --add) is another world
            world_part["manifest"] = self.dataset_fingerprint()
        self.stage("world", world_part, [], self._world)
        for s in self.sources:
            self.stage(f"pseudo:{s}", {"source": s, "options": c.generators.get(s, {}), "seed": self.cfg.data.seed},
                       ["world"], functools.partial(self._pseudo, s))
        pseudo = [f"pseudo:{s}" for s in self.sources]
        self.stage("measurers", self._training_part(self.measurer_epochs), pseudo, self._measurers)
        for m in self.sources:
            self.stage(f"scores:{m}", {"measurer": m, "bins": c.histogram_bins}, ["measurers", *pseudo],
                       functools.partial(self._scores, m))
        scores = [f"scores:{m}" for m in self.sources]
        search = {"thresholds": c.thresholds, "search": c.search, "refine_steps": c.refine_steps,
                  "training": self._training_part(self.trial_epochs)}
        self.stage("ssa", search, [f"scores:{self.sources[0]}"], self._ssa)
        self.stage("msa", {**search, "h0": c.h0, "order": c.source_order, "sources": self.sources,
                           "measurer_selection": c.measurer_selection}, scores, self._msa)
        self.stage("finals", self._training_part(self.final_epochs), ["ssa", "msa", "measurers"], self._finals)
        self.stage("report", {"version": 1}, ["finals", "ssa", "msa", *scores, *pseudo], self._report)
        return self.outputs.get("report", {})  # absent only while planning

    # ---------------------------------------------------------------- stages
    def dataset_fingerprint(self) -> str:
        """A hash of the ``data.uri`` dataset's manifest (what it holds and when it was written)."""
        uri = storage.join(self.cfg.data.uri, "manifest.json")
        if not storage.exists(uri, **self.options):
            raise UserError(f"data.uri {self.cfg.data.uri} is not a clipvg dataset (no manifest.json there; "
                            f"make one with `clipvg import-official` or `clipvg synth`)")
        return hashlib.sha256(storage.read_bytes(uri, **self.options)).hexdigest()[:16]

    def _world(self) -> dict:
        # deferred: loads torch; paid only when this runs, not on import
        from clipvg.engine.batching import ensure_dataset

        uri = ensure_dataset(self.cfg)
        if "://" not in uri:
            uri = str(Path(uri).resolve())
        manifest = storage.read_json(storage.join(uri, "manifest.json"), **self.options)
        counts = manifest.get("counts", {})
        wanted = [self.cfg.data.val_split, *self.cfg.data.test_splits]
        absent = [s for s in wanted if s not in counts] if counts else []
        if absent:
            raise UserError(f"{uri} has no split {absent[0]!r} (data.val_split / data.test_splits); "
                            f"its splits: {', '.join(sorted(counts))}")
        out = {"uri": uri, "counts": counts}
        imported = pseudo_sources(uri, manifest)
        if imported:  # absent for datasets without ready-made labels: their stage keys stay
            out["pseudo_sources"] = imported
        return out

    def imported(self, source: str) -> dict | None:
        """The dataset's ready-made labels of ``source`` (import-official), or None."""
        return self.outputs["world"].get("pseudo_sources", {}).get(source)

    def _pseudo(self, source: str) -> dict:
        """The source's pseudo-labels as a samples table under ``<run>/pseudo/<source>``: the
        dataset's imported rows of that source as they are (extra columns such as the official
        ``box_raw`` / ``aux`` kept, for ``export-official --run``), else generated from the
        dataset's record tables."""
        out, world, imported = self.uri("pseudo", source), self.outputs["world"]["uri"], self.imported(source)
        if imported is not None:
            rows = source_rows(world, source, imported["split"], **self.options)
            storage.write_table(validate_table(rows, SAMPLES, where=out), out, **self.options)
            return {"uri": out, "rows": rows.num_rows, "imported": imported}
        made = generate_source(world, source, out, seed=self.cfg.data.seed,
                               options=self.cfg.curriculum.generators.get(source, {}),
                               exclude_splits=(self.cfg.data.val_split, *self.cfg.data.test_splits),
                               num_cpus=self.cfg.scaling.data_cpus,
                               resources=self.cfg.scaling.data_resources, **self.options)
        return {"uri": out, **made}

    def samples_uri(self, source: str) -> str:
        return self.outputs[f"pseudo:{source}"]["uri"]

    def _measurers(self) -> dict:
        cands = [schedulers.Candidate(f"measurer {s}", [PoolEntry(samples=self.samples_uri(s))], {"source": s})
                 for s in self.sources]
        outcomes = self.evaluator(self.measurer_epochs)(cands)
        return {s: {"run_dir": o.run_dir, "val_acc": o.val_acc, "test": o.test}
                for s, o in zip(self.sources, outcomes)}

    def _scores(self, measurer: str) -> dict:
        """Every source scored by ``measurer``, in one Ray Data job (the actor pool starts once:
        replicas import torch and load the model, seconds each), then one scores table and
        histogram (json, png) per source."""
        # deferred: loads matplotlib and torch; paid only when this runs, not on import
        from clipvg.curriculum.plots import score_histograms
        from clipvg.distributed.scoring import score_samples, summary

        model_dir = storage.join(self.outputs["measurers"][measurer]["run_dir"], "best")
        samples = pa.concat_tables([storage.read_table(self.samples_uri(s), **self.options) for s in self.sources],
                                   promote_options="permissive")
        scores = score_samples(model_dir, self.outputs["world"]["uri"], samples, cfg=self.base(),
                               measurer=measurer, source="")
        scores = scores.set_column(scores.schema.get_field_index("source"), "source", samples.column("source"))
        out = {}
        for s in self.sources:
            uri = self.uri("scores", f"{measurer}-on-{s}")
            part = scores.filter(pc.field("source") == s)
            storage.write_table(part, uri, **self.options)
            hist = score_histograms(part, uri, self.cfg.curriculum.histogram_bins, **self.options)
            sizes = subset_sizes(part, self.cfg.curriculum.thresholds)
            out[s] = {"uri": uri, **summary(part), "histogram": hist["png"],
                      "subset_sizes": {f"{h:g}": n for h, n in sizes.items()}}
        return out

    def scores_uri(self, measurer: str, source: str) -> str:
        return self.outputs[f"scores:{measurer}"][source]["uri"]

    def _ssa(self) -> dict:
        c, s = self.cfg.curriculum, self.sources[0]
        result = schedulers.ssa(self.samples_uri(s), self.scores_uri(s, s), c.thresholds,
                                self.evaluator(self.trial_epochs),
                                refine_steps=c.refine_steps if c.search == "refine" else None)
        return {"source": s, "h": result.h, "curve": _curve(result), "chosen": _outcome(result.chosen)}

    def _msa(self) -> dict:
        c = self.cfg.curriculum
        samples = {s: self.samples_uri(s) for s in self.sources}
        scores = {(m, s): self.scores_uri(m, s) for m in self.sources for s in self.sources}
        refine = c.refine_steps if c.search == "refine" else None
        own = c.measurer_selection == "own"
        run_msa = functools.partial(_msa_along, samples=samples, scores=scores, measurers=self.sources,
                                    h0=c.h0, thresholds=c.thresholds, refine_steps=refine, own_measurer=own)
        order_accs = {}
        if c.source_order == "greedy":
            result = schedulers.msa_greedy(samples, scores, self.sources, c.h0, c.thresholds,
                                           self.evaluator(self.trial_epochs), refine_steps=refine,
                                           own_measurer=own)
        else:
            order = self.sources
            if c.source_order == "search" and len(self.sources) > 1:
                order_accs = search_orders(self.base(), schedulers.all_orders(self.sources), run_msa,
                                           trials_root=self.uri("trials"), tune_root=self.uri("tune"),
                                           epochs=self.trial_epochs)
                order = list(max(order_accs, key=order_accs.get))
            result = run_msa(list(order), self.evaluator(self.trial_epochs))  # cached when searched
        return {"order": result.order, "thresholds": result.thresholds, "order_search": c.source_order,
                "order_accs": {" > ".join(o): a for o, a in order_accs.items()},
                "steps": [_step(s) for s in result.steps], "final": _outcome(result.final)}

    def _finals(self) -> dict:
        ssa, msa = self.outputs["ssa"], self.outputs["msa"]
        methods = {
            "raw_template": [PoolEntry(samples=self.samples_uri(self.sources[0]))],
            "ssa": _pool(ssa["chosen"]["pool"]),
            "raw_union": [PoolEntry(samples=self.samples_uri(s)) for s in self.sources],
            "msa": _pool(msa["final"]["pool"]),
            "full_supervised": [],
        }
        left_out = {}
        train = self.cfg.data.train_split
        counts = self.outputs["world"]["counts"]
        if counts and train not in counts:  # e.g. CLIP-VG's unsupervised release
            del methods["full_supervised"]
            left_out["full_supervised"] = (
                f"the dataset has no ground-truth split {train!r} (data.train_split) to train on; "
                f"import it with `clipvg import-official --add --splits train` to compare")
        cands = [schedulers.Candidate(name, pool) for name, pool in methods.items()]
        outcomes = self.evaluator(self.final_epochs)(cands)
        finals = {name: _outcome(o) for name, o in zip(methods, outcomes)}
        return {**finals, "left_out": left_out} if left_out else finals

    def _report(self) -> dict:
        from clipvg.curriculum.report import PipelineResult, write_report  # matplotlib: report stage only

        return write_report(PipelineResult(
            run_dir=self.run_dir, cfg=self.cfg, base=self.base(), sources=self.sources,
            outputs=self.outputs, options=self.options, trial_epochs=self.trial_epochs,
            measurer_epochs=self.measurer_epochs, final_epochs=self.final_epochs))


def _pool(raw: list[dict]) -> list[PoolEntry]:
    return [PoolEntry(**e) for e in raw]


def _outcome(o: schedulers.Outcome) -> dict:
    return {"label": o.candidate.label, "params": o.candidate.params, "val_acc": o.val_acc, "test": o.test,
            "test_shuffled_text": o.test_shuffled_text,
            "run_dir": o.run_dir, "stopped": o.stopped, "empty": o.empty, "pool": [dataclasses.asdict(e) for e in o.candidate.pool]}


def _curve(search: schedulers.ThresholdSearch) -> list[dict]:
    return [{"h": h, "val_acc": o.val_acc, "test": o.test, "stopped": o.stopped, "empty": o.empty}
            for h, o in search.curve.items()]


def _step(step: schedulers.MsaStep) -> dict:
    return {"source": step.source, "measurer": step.measurer, "h": step.search.h,
            "measurer_accs": {m: o.val_acc for m, o in step.measurer_accs.items()},
            "curve": _curve(step.search), "chosen": _outcome(step.search.chosen)}


def run_pipeline(cfg: Config, args) -> int:
    """``clipvg pipeline`` after its command line (:mod:`clipvg.distributed.pipeline_cli`)
    loaded ``cfg`` and checked its hub weights: Ray, the stages, the summary."""
    # Ctrl-C stops the pipeline at once (a rerun continues it). Tune's own handler would end
    # the running search early and hand back unfinished trials as if the search were done.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # a wrong endpoint or bucket: one line now, before Ray's start-up (seconds)
    storage.check_access(cfg.storage.root, cfg.data.uri, **storage.options_from_config(cfg.storage))
    init_ray(args.address, args.num_cpus, dashboard=True)  # Tune's nested trainers need it
    start = time.perf_counter()
    pipeline = Pipeline(cfg, until=args.until, overwrite=args.overwrite)
    report = pipeline.run()
    print(f"\npipeline finished in {time.perf_counter() - start:.0f} s "
          f"(ran {len(pipeline.ran)} stages, skipped {len(pipeline.skipped)} finished ones)")
    if "stopped_after" in report:
        print(f"stopped after {report['stopped_after']} (--until); rerun without it to continue")
        return 0
    print(report.get("summary", ""))
    print(f"report: {report['markdown']}")
    return 0

