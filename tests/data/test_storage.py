"""Storage: URI resolution, round trips, and atomic publication (local and an object store)."""

import os
import posixpath

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from clipvg.data import storage


def table(n=5, offset=0):
    return pa.table({"a": list(range(offset, offset + n)), "b": [f"x{i}" for i in range(n)]})


def test_filesystem_resolves_local_file_and_s3_uris(tmp_path, monkeypatch):
    fs, path = storage.filesystem(str(tmp_path / "x"))
    assert storage.is_local(fs) and path == str(tmp_path / "x")
    fs, path = storage.filesystem(f"file://{tmp_path}/y/", endpoint_url="http://ignored")
    assert storage.is_local(fs) and path == f"{tmp_path}/y"
    monkeypatch.chdir(tmp_path)
    assert storage.filesystem("rel/z")[1] == f"{tmp_path}/rel/z"
    fs, path = storage.filesystem("s3://bucket/key/", endpoint_url="http://127.0.0.1:9")
    assert "s3" in fs.protocol and path == "bucket/key"
    assert fs.endpoint_url == "http://127.0.0.1:9"
    assert storage.join("s3://b/", "/t/", "f.png") == "s3://b/t/f.png"


@pytest.mark.parametrize("root", ["local", "memory"])
def test_bytes_json_and_tables_round_trip(tmp_path, root):
    base = str(tmp_path) if root == "local" else f"memory://rt-{os.getpid()}"
    storage.write_bytes(b"abc", storage.join(base, "deep/dir/f.bin"))
    assert storage.read_bytes(storage.join(base, "deep/dir/f.bin")) == b"abc"
    storage.write_json({"b": 1, "a": [1, 2]}, storage.join(base, "m.json"))
    assert storage.read_json(storage.join(base, "m.json")) == {"a": [1, 2], "b": 1}
    uri = storage.join(base, "t")
    storage.write_table(table(), uri)
    assert storage.read_table(uri).equals(table())
    assert storage.read_table(uri, columns=["b"], filter=pc.field("a") > 2).num_rows == 2
    fs, path = storage.filesystem(base)
    leftovers = [p for p in fs.find(path) if posixpath.basename(p).startswith(".tmp-")]
    assert leftovers == []
    assert storage.exists(uri) and not storage.exists(storage.join(base, "nope"))
    assert storage.remove(storage.join(base, "m.json"))
    assert not storage.remove(storage.join(base, "m.json"))


def test_write_table_modes(tmp_path):
    uri = str(tmp_path / "t")
    storage.write_table(table(3), uri, part="part-a.parquet")
    storage.write_table(table(2, 10), uri, part="part-b.parquet", mode="add")
    assert storage.read_table(uri).column("a").to_pylist() == [0, 1, 2, 10, 11]
    with pytest.raises(FileExistsError):
        storage.write_table(table(1), uri, mode="error")
    storage.write_table(table(1, 7), uri)  # overwrite drops the other parts
    assert storage.list_parts(uri) == [f"{uri}/part-00000.parquet"]
    assert storage.read_table(uri).column("a").to_pylist() == [7]
    with pytest.raises(ValueError):
        storage.write_table(table(1), uri, part=".hidden.parquet")


def test_reader_ignores_hidden_leftovers_and_reports_missing(tmp_path):
    uri = str(tmp_path / "t")
    storage.write_table(table(2), uri)
    (tmp_path / "t" / ".tmp-123-part-00001.parquet").write_bytes(b"half a file")
    (tmp_path / "t" / "_SUCCESS").write_bytes(b"")
    assert storage.read_table(uri).num_rows == 2
    assert storage.read_table(f"{uri}/part-00000.parquet").num_rows == 2  # a single file
    with pytest.raises(FileNotFoundError):
        storage.read_table(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Parquet parts"):
        storage.read_table(str(tmp_path / "empty"))


@pytest.mark.parametrize("root", ["local", "memory"])
def test_publication_is_atomic(tmp_path, root):
    """While the writer runs the final name does not exist; the temporary is a hidden
    sibling; on failure nothing is left behind and an old version stays intact."""
    base = str(tmp_path) if root == "local" else f"memory://atomic-{os.getpid()}"
    fs, folder = storage.filesystem(base)
    final = posixpath.join(folder, "out.bin")
    seen = {}

    def write(f):
        seen["final_exists"] = fs.exists(final)
        seen["temps"] = [p for p in fs.ls(folder, detail=False)
                         if posixpath.basename(p).startswith(".tmp-")]
        f.write(b"new")

    storage._write_atomic(fs, final, write)
    assert seen == {"final_exists": False, "temps": seen["temps"]} and len(seen["temps"]) == 1
    assert storage.read_bytes(storage.join(base, "out.bin")) == b"new"

    def crash(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        storage._write_atomic(fs, final, crash)
    assert storage.read_bytes(storage.join(base, "out.bin")) == b"new"
    assert [p for p in fs.ls(folder, detail=False) if ".tmp-" in p] == []


def teardown_module(module):
    # The memory filesystem is process-global: leave no state for other test modules.
    mem = fsspec.filesystem("memory")
    for p in mem.ls("/", detail=False):
        if posixpath.basename(p).startswith(("rt-", "atomic-")):
            mem.rm(p, recursive=True)


def test_storage_options_from_config_and_s3_region(monkeypatch):
    from clipvg.config import StorageConfig

    cfg = StorageConfig(endpoint_url="http://127.0.0.1:9", region="eu-west-1")
    assert storage.options_from_config(cfg) == {"endpoint_url": "http://127.0.0.1:9", "region": "eu-west-1"}
    fs, _ = storage.filesystem("s3://b/k", **storage.options_from_config(cfg))
    assert fs.client_kwargs["region_name"] == "eu-west-1"
    local, _ = storage.filesystem("/tmp/x", region="eu-west-1", profile="p")  # dropped off S3
    assert storage.is_local(local)


def test_gs_without_gcsfs_names_the_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_gcsfs(name, *args, **kwargs):
        if name.startswith("gcsfs"):
            raise ImportError("No module named 'gcsfs'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gcsfs)
    with pytest.raises(ImportError, match="pip install gcsfs"):
        storage.filesystem("gs://bucket/data")


def test_table_schema_and_has_values_read_footers_only(tmp_path):
    uri = str(tmp_path / "t")
    storage.write_table(pa.table({"a": [1, 2], "bytes": pa.array([None, None], pa.binary())}), uri)
    assert storage.table_schema(uri).names == ["a", "bytes"]
    assert not storage.has_values(uri, "bytes") and storage.has_values(uri, "a")
    assert not storage.has_values(uri, "missing")
    storage.write_table(pa.table({"a": [3], "bytes": [b"x"]}), uri, part="part-00001.parquet", mode="add")
    assert storage.has_values(uri, "bytes")


def test_pyarrow_filesystem_reads_the_same_table_as_fsspec(s3, tmp_path):
    import pyarrow.parquet as pq

    for uri, options in ((storage.join(s3.uri("pafs"), "t"), s3.options), (str(tmp_path / "t"), {})):
        storage.write_table(pa.table({"a": [1, 2, 3]}), uri, **options)
        fs, path = storage.pyarrow_filesystem(uri, **options)
        assert pq.read_table(path, filesystem=fs).column("a").to_pylist() == [1, 2, 3]


def test_one_resolution_of_storage_options():
    from clipvg.config import StorageConfig

    cfg = StorageConfig(endpoint_url="http://127.0.0.1:9", profile="p")
    assert storage.options_from_config(cfg) == {"endpoint_url": "http://127.0.0.1:9", "profile": "p"}
    # a command's --endpoint-url takes the place of storage.endpoint_url; the rest stays
    assert storage.options_from_config(cfg, endpoint_url="http://127.0.0.1:8") == {
        "endpoint_url": "http://127.0.0.1:8", "profile": "p"}
    assert storage.options_from_config(None, endpoint_url=None) == {}
    assert storage.is_uri("s3://b/k") and not storage.is_uri("/tmp/x") and not storage.is_uri("file:///x")
    assert storage.local_path("file:///tmp/x") == "/tmp/x" and storage.local_path("s3://b/k") is None


def test_check_access_names_the_endpoint_and_refuses_mangled_uris(s3, tmp_path, monkeypatch):
    from clipvg.errors import UserError

    storage.check_access(s3.uri("ok"), str(tmp_path), None, **s3.options)  # reachable: nothing
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    with pytest.raises(UserError, match=r"^cannot reach the S3 endpoint http://127.0.0.1:9 \(for s3://"):
        storage.check_access(s3.uri("x"), endpoint_url="http://127.0.0.1:9")
    with pytest.raises(UserError, match=f"cannot use s3://no-such-bucket/x at the S3 endpoint {s3.endpoint_url}"):
        storage.check_access("s3://no-such-bucket/x", **s3.options)
    with pytest.raises(UserError, match="one slash too few"):
        storage.check_access("s3:/bucket/x")
    assert not (tmp_path / "s3:").exists()


def test_folders_upload_download_and_remove(s3, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"a")
    (src / "sub" / "b.bin").write_bytes(b"b")
    (src / "state.json").write_text("{}")
    uri = s3.uri("folder")
    storage.write_bytes(b"old", storage.join(uri, "state.json"), **s3.options)
    storage.upload_folder(src, uri, last=("state.json",), **s3.options)
    assert storage.download_folder(uri, tmp_path / "dst", **s3.options)
    assert sorted(str(p.relative_to(tmp_path / "dst")) for p in (tmp_path / "dst").rglob("*") if p.is_file()) == [
        "a.bin", "state.json", "sub/b.bin"]
    assert (tmp_path / "dst" / "state.json").read_text() == "{}"
    assert storage.remove_tree(uri, **s3.options) and not storage.exists(storage.join(uri, "a.bin"), **s3.options)
    assert not storage.remove_tree(uri, **s3.options)
    assert not storage.download_folder(uri, tmp_path / "none", **s3.options)
