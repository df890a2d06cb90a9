"""The data commands go only where they are told, and synth never replaces a dataset unasked.

``synth``, ``validate``, ``import-official`` and ``export-official`` with ``s3://`` URIs and the
moto endpoint given by ``--endpoint-url`` only, while ``AWS_ENDPOINT_URL`` (every S3 client's
fallback) points at a loopback trap (tests/storage_trap.py): everything lands in the bucket,
the trap sees no connection, and no local file or folder is named after a URI. A wrong
endpoint fails at once with one line naming it, before anything is written anywhere.
"""

import argparse
import importlib
import os

import pytest
import torch

from clipvg.data import storage
from clipvg.errors import UserError
from storage_trap import keys, mangled_paths, trap

SYNTH = ["--image-size", "32", "--no-progress", "--val", "1", "--test", "1"]
COMMANDS = {"synth": "clipvg.sources.synthetic.cli", "validate": "clipvg.data.validate_cli",
            "import-official": "clipvg.sources.official.cli", "export-official": "clipvg.sources.official.cli"}
IMAGE = "COCO_train2014_000000000839.jpg"
UNC_TRAIN = [(IMAGE, "1.pth", [3.5, 6.0, 20.0, 10.0], "the red one", []),
             (IMAGE, "2.pth", [1.0, 2.0, 5.0, 5.0], "small thing on the left", [])]


def run(command: str, *argv: str) -> int:
    """``clipvg <command> argv`` through the command module itself (its argparse and run)."""
    module = importlib.import_module(COMMANDS[command])
    parser = argparse.ArgumentParser(prog=f"clipvg {command}")
    module.add_arguments(parser)
    return module.run(parser.parse_args(list(argv)))


def official_files(folder):
    """An official unc split root with one train file, and its image root."""
    from PIL import Image

    split = folder / "splits" / "unc" / "unc_train.pth"
    split.parent.mkdir(parents=True)
    torch.save(UNC_TRAIN, split)
    image = folder / "image_data" / "other/images/mscoco/images/train2014" / IMAGE
    image.parent.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image, format="JPEG")
    return folder / "splits", folder / "image_data"


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    """An empty working directory: a command that made a local folder of a URI shows here."""
    path = tmp_path / "cwd"
    path.mkdir()
    monkeypatch.chdir(path)
    return path


def test_synth_and_validate_write_only_to_the_bucket(s3, cwd, monkeypatch):
    uri = s3.uri("synth")
    with trap(monkeypatch) as t:
        assert run("synth", "--out", uri, "--endpoint-url", s3.endpoint_url, "--images", "2", *SYNTH) == 0
        assert run("validate", uri, "--endpoint-url", s3.endpoint_url) == 0
    assert t.connections == 0
    found = keys(s3, uri)
    assert "manifest.json" in found and any(k.startswith("samples/") for k in found)
    assert sum(k.startswith("files/") for k in found) == 4  # 2 + 1 + 1 images
    assert os.listdir(cwd) == [] and mangled_paths(cwd.parent) == []


def test_official_import_and_export_write_only_to_the_bucket(s3, cwd, tmp_path, monkeypatch):
    from clipvg.sources.official.unpickler import load_split_file

    split_root, image_root = official_files(tmp_path / "official")
    uri, exported = s3.uri("unc"), f"{s3.uri('export')}/unc_train.pth"
    with trap(monkeypatch) as t:
        assert run("import-official", "--dataset", "unc", "--split-root", str(split_root),
                   "--image-root", str(image_root), "--out", uri, "--no-progress",
                   "--endpoint-url", s3.endpoint_url) == 0
        assert run("export-official", uri, "--dataset", "unc", "--split", "train", "--out", exported,
                   "--endpoint-url", s3.endpoint_url) == 0
    assert t.connections == 0
    found = keys(s3, uri)
    assert "manifest.json" in found and f"files/{IMAGE}" in found
    assert len(load_split_file(exported, endpoint_url=s3.endpoint_url)) == len(UNC_TRAIN)
    assert os.listdir(cwd) == [] and mangled_paths(tmp_path) == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_wrong_endpoint_fails_at_once_naming_it(command, s3, cwd, tmp_path, monkeypatch):
    split_root, image_root = official_files(tmp_path / "official")
    uri, wrong = s3.uri("wrong"), "http://127.0.0.1:9"
    argv = {"synth": ["--out", uri, "--images", "2", *SYNTH],
            "validate": [uri],
            "import-official": ["--dataset", "unc", "--split-root", str(split_root),
                                "--image-root", str(image_root), "--out", uri, "--no-progress"],
            "export-official": [uri, "--dataset", "unc", "--split", "train", "--out", str(cwd / "x.pth")],
            }[command]
    with trap(monkeypatch) as t:
        with pytest.raises(UserError) as err:
            run(command, *argv, "--endpoint-url", wrong)
    message = str(err.value)
    assert f"S3 endpoint {wrong} " in message and "\n" not in message
    assert t.connections == 0
    assert os.listdir(cwd) == []


def test_a_mangled_uri_is_refused_before_any_local_folder_is_made(cwd):
    with pytest.raises(UserError, match=r"one slash too few \(did you mean 's3://bucket/w'\?\)"):
        run("synth", "--out", "s3:/bucket/w", "--images", "2", *SYNTH)
    assert os.listdir(cwd) == []


def test_synth_refuses_to_replace_a_different_dataset(tmp_path, capsys):
    out = str(tmp_path / "world")
    manifest = storage.join(out, "manifest.json")
    assert run("synth", "--out", out, "--images", "3", *SYNTH) == 0
    first = storage.read_json(manifest)
    assert run("synth", "--out", out, "--images", "3", *SYNTH) == 0  # identical: reused
    assert "already there, unchanged" in capsys.readouterr().out
    with pytest.raises(UserError) as refused:
        run("synth", "--out", out, "--images", "2", "--seed", "1", *SYNTH)
    assert "--overwrite" in str(refused.value) and "seed 0" in str(refused.value)
    assert storage.read_json(manifest) == first  # untouched
    assert run("synth", "--out", out, "--images", "2", "--seed", "1", "--overwrite", *SYNTH) == 0
    second = storage.read_json(manifest)
    assert second["seed"] == 1 and second["counts"]["train"]["images"] == 2
    assert len(os.listdir(tmp_path / "world" / "files")) == 4  # the first world's files are gone
