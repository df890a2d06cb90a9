"""The ``clipvg`` command's contract with a user: one line per bad input (exit 2, the file or key
named), Ctrl-C as one line (exit 130), ``--debug`` / ``CLIPVG_DEBUG=1`` for the traceback, real
bugs keep theirs; ``--version``; config files by path or by packaged name, checked before any
work."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import clipvg
from clipvg import cli
from clipvg.config import CONFIGS_DIR, ConfigError, load_config
from clipvg.errors import InterruptedRun, UserError


@pytest.fixture
def command(monkeypatch):
    """Register a fake command ``boom`` whose run() raises what the test sets."""
    module = types.ModuleType("clipvg_test_boom")
    module.add_arguments = lambda parser: None
    module.error = None

    def run(args):
        raise module.error

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "boom", (module.__name__, "test command"))
    monkeypatch.delenv("CLIPVG_DEBUG", raising=False)
    return module


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_user_error_is_one_line_with_its_exit_code(command, capsys):
    command.error = UserError("data.uri /nowhere: no dataset\n(manifest.json missing)")
    assert cli.main(["boom"]) == 2
    assert one_line(capsys.readouterr().err) == "clipvg boom: data.uri /nowhere: no dataset (manifest.json missing)"
    command.error = ConfigError("train.lr: -1 must be > 0")
    assert cli.main(["boom"]) == 2
    assert one_line(capsys.readouterr().err) == "clipvg boom: config error: train.lr: -1 must be > 0"


def test_ctrl_c_is_one_line_exit_130(command, capsys):
    command.error = KeyboardInterrupt()
    assert cli.main(["boom"]) == 130
    assert one_line(capsys.readouterr().err) == "clipvg boom: interrupted"
    command.error = InterruptedRun("interrupted at epoch 3 step 40: last/ holds epoch 2; rerun with train.resume=true")
    assert cli.main(["boom"]) == 130
    assert "last/ holds epoch 2" in one_line(capsys.readouterr().err)


def test_debug_flag_and_environment_show_the_traceback(command, monkeypatch):
    command.error = UserError("bad input")
    with pytest.raises(UserError, match="bad input"):
        cli.main(["--debug", "boom"])
    monkeypatch.setenv("CLIPVG_DEBUG", "1")
    with pytest.raises(UserError):
        cli.main(["boom"])
    command.error = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        cli.main(["boom"])
    monkeypatch.setenv("CLIPVG_DEBUG", "0")
    command.error = UserError("bad input")
    assert cli.main(["boom"]) == 2


def test_a_bug_keeps_its_traceback(command):
    command.error = ZeroDivisionError("a bug, not bad input")
    with pytest.raises(ZeroDivisionError):
        cli.main(["boom"])


def test_user_error_raised_in_a_ray_task_is_one_line(command, capsys):
    class RayTaskErrorLike(Exception):  # what ray.exceptions.RayTaskError carries: .cause
        def __init__(self, cause):
            super().__init__("ray::task() (pid=1)\nTraceback (most recent call last): ...")
            self.cause = cause

    command.error = RayTaskErrorLike(ConfigError("model.taps: [0, 99] ..."))
    assert cli.main(["boom"]) == 2
    assert one_line(capsys.readouterr().err) == "clipvg boom: config error: model.taps: [0, 99] ..."


def test_unreachable_storage_endpoint_is_one_line_naming_it(command, capsys):
    from botocore.exceptions import EndpointConnectionError

    try:  # as s3fs raises it: an OSError from the botocore error
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/ds/manifest.json")
        except EndpointConnectionError as e:
            raise OSError("[Errno 5] ...") from e
    except OSError as e:
        command.error = e
    assert cli.main(["boom"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("clipvg boom: cannot reach the storage endpoint http://127.0.0.1:9 ")


def test_unreachable_s3_endpoint_end_to_end(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.delenv("CLIPVG_DEBUG", raising=False)
    assert cli.main(["validate", "s3://bucket/ds", "--endpoint-url", "http://127.0.0.1:9"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("clipvg validate: ") and "127.0.0.1:9" in line


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"clipvg {clipvg.__version__}"


# ------------------------------------------------------------------------------ config files
def test_missing_config_file_names_it(capsys, tmp_path):
    assert cli.main(["train-local", "--config", str(tmp_path / "nope.yaml")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "nope.yaml does not exist" in line and "--config demo" in line


def test_yaml_syntax_error_names_file_and_line(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: [1, 2\nmodel:\n  taps: [0]\n")
    assert cli.main(["train-local", "--config", str(path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{path}: invalid YAML at line 4" in line and "started at line 3" in line
    with pytest.raises(ConfigError, match=r"override 'train.lr=\[1': invalid YAML"):
        load_config(None, ["train.lr=[1"])


def test_taps_beyond_the_tower_fail_before_any_work(capsys, tmp_path):
    root = tmp_path / "runs"
    code = cli.main(["train-local", "--config", "demo", "model.taps=[0,99]", f"storage.root={root}"])
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert "model.taps" in line and "4 blocks" in line
    assert not root.exists()  # no world generated, no run folder
    with pytest.raises(ConfigError, match="model.taps: .* has 12 blocks"):
        load_config(None, ["model.arch=ViT-B-16", "model.taps=[0,12]"])  # named arch: open_clip's JSON
    with pytest.raises(ConfigError, match="distinct"):
        load_config(None, ["model.taps=[3,3]"])
    assert load_config(None, ["model.taps=[0,11]"]).model.taps == [0, 11]


def test_bare_config_name_is_the_packaged_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the checkout: configs/demo.yaml is not here
    cfg = load_config("demo")
    assert cfg == load_config(CONFIGS_DIR / "demo.yaml")
    # the towers it names resolve inside the package, wherever the command runs
    assert cfg.model.weights == str(CONFIGS_DIR.parent / "assets/towers/tiny-synth-v1/open_clip_model.safetensors")
    with pytest.raises(ConfigError, match="no packaged config named 'dem'.*demo"):
        load_config("dem")
    (tmp_path / "mine.yaml").write_text("train: {epochs: 2}\n")
    assert load_config("mine.yaml").train.epochs == 2  # a path works as before


# ------------------------------------------------------------------------------ start-up
def test_run_commands_answer_bad_input_before_the_heavy_imports():
    """``train-local``, ``train`` and ``pipeline`` load their config and check the hub weights
    (clipvg.model.hub) in modules that load neither torch, open_clip nor pandas: those come
    after (15-25 s on a loaded 2-core machine)."""
    repo = str(Path(__file__).resolve().parents[1])
    modules = [cli.COMMANDS[c][0] for c in ("train-local", "train", "pipeline")]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in ('torch', 'open_clip', 'pandas', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": repo})
    assert out.stdout.strip() == "[]"


def test_overrides_may_come_before_or_after_flags(command):
    """``clipvg pipeline --until world data.seed=7`` and ``... data.seed=7 --until world`` mean
    the same (planted defect: plain parse_args, which refuses overrides after a flag)."""
    def add_arguments(parser):
        parser.add_argument("--until")
        parser.add_argument("--overwrite", action="store_true")
        parser.add_argument("overrides", nargs="*")

    seen = []
    command.add_arguments = add_arguments
    command.run = lambda args: seen.append((args.until, args.overwrite, args.overrides)) or 0
    assert cli.main(["boom", "a=1", "--until", "world", "b=2", "--overwrite", "c=3"]) == 0
    assert cli.main(["boom", "--overwrite", "--until", "world", "a=1", "b=2", "c=3"]) == 0
    assert seen[0] == seen[1] == ("world", True, ["a=1", "b=2", "c=3"])


def _wrong_endpoint_commands(s3, wrong: str) -> dict:
    """Each storage-touching Ray command with its inputs and outputs on S3 and ``wrong`` as the
    endpoint (argument or ``storage.endpoint_url``)."""
    run = s3.uri("wrong-endpoint")
    return {
        "evaluate": ["evaluate", "--checkpoint", f"{run}/model", "--data", f"{run}/data", "--splits", "val",
                     "--out", f"{run}/eval", "--endpoint-url", wrong],
        "score": ["score", "--model", f"{run}/model", "--samples", f"{run}/samples", "--out", f"{run}/scores",
                  f"storage.root={run}", f"storage.endpoint_url={wrong}"],
        "pipeline": ["pipeline", f"storage.root={run}", f"storage.endpoint_url={wrong}"],
        "predict": ["predict", "--checkpoint", f"{run}/model", "--image", f"{run}/img.png", "--text", "x",
                    "--endpoint-url", wrong],
    }


@pytest.mark.parametrize("name", ["evaluate", "score", "pipeline", "predict"])
def test_a_wrong_endpoint_is_one_line_naming_it_before_any_work(s3, name, capsys, monkeypatch):
    """A wrong endpoint (a closed loopback port) given to a command whose data is on S3: exit 2,
    one line naming that endpoint, no Ray started, and nothing sent anywhere else (the session's
    AWS_ENDPOINT_URL trap stays silent: ``no_default_endpoint``). Planted: a command that checks
    its storage with the environment's endpoint instead of the given one reaches the trap."""
    import ray
    from s3_server import free_port

    monkeypatch.delenv("CLIPVG_DEBUG", raising=False)
    wrong = f"http://127.0.0.1:{free_port()}"
    assert cli.main(_wrong_endpoint_commands(s3, wrong)[name]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"clipvg {name}: ") and wrong in line, line
    assert not ray.is_initialized()


# ------------------------------------------------------------------------------ places the file system refuses
def test_a_file_where_the_output_folder_belongs_is_one_line(tmp_path, capsys, monkeypatch):
    """``synth --out`` naming a path under a file (NotADirectoryError): one line naming it,
    exit 2, the file untouched."""
    monkeypatch.delenv("CLIPVG_DEBUG", raising=False)
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    assert cli.main(["synth", "--out", str(blocker / "world"), "--images", "2", "--val", "1", "--test", "1",
                     "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("clipvg synth: ") and str(blocker) in line, line
    assert blocker.read_text() == "not a folder"


def test_a_read_only_disk_is_one_line_naming_the_file(command, capsys):
    """As the OS reports a read-only mount (Errno 30; root ignores permission bits, so the
    error is raised as storage._write_atomic receives it)."""
    import errno

    command.error = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/runs/demo/config.yaml")
    assert cli.main(["boom"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == ("clipvg boom: cannot write or read /mnt/ro/runs/demo/config.yaml: Read-only file "
                    "system; check storage.root / --out and that the folder is writable")
    command.error = OSError(errno.EIO, "Input/output error", "/dev/sdz")  # not a place: a bug report
    with pytest.raises(OSError):
        cli.main(["boom"])


def test_a_truncated_samples_table_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    """``validate`` on a dataset whose samples Parquet was cut short (ArrowInvalid inside
    storage.read_table): one line naming the table, exit 2, nothing written."""
    from listing import listing

    monkeypatch.delenv("CLIPVG_DEBUG", raising=False)
    out = tmp_path / "world"
    assert cli.main(["synth", "--out", str(out), "--images", "2", "--val", "1", "--test", "1", "--no-progress"]) == 0
    capsys.readouterr()
    part = sorted((out / "samples").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    before = listing(out)
    assert cli.main(["validate", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("clipvg validate: cannot read the Parquet table") and "samples" in line, line
    assert listing(out) == before
