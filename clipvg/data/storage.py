"""URI -> filesystem, table/JSON/bytes I/O and atomic publication, for local paths and object
stores alike.

Every function takes a URI (``/abs/path``, ``rel/path``, ``file:///...``, ``s3://bucket/key``,
``gs://bucket/key`` with gcsfs installed, or anything fsspec knows) and optional
``**storage_options`` that are passed to the fsspec filesystem. For ``s3://`` three portable
options are understood - ``endpoint_url`` (MinIO, Ceph, moto), ``region`` and ``profile`` (a
named AWS profile) - and dropped for other schemes, so callers can always pass
:func:`options_from_config` of the run. Credentials themselves never go through the config
(it is written next to every output): they come from the standard chain - ``AWS_*``
environment variables (``AWS_ENDPOINT_URL`` included), ``~/.aws`` files, an instance role or
IRSA on a cluster; for ``gs://`` the Google default credentials.

Writes are atomic for readers: a file is written under a hidden temporary name
(``.tmp-<uuid>-<name>``) in the destination folder and then published - renamed on a local
filesystem, copied-then-deleted on an object store - so a reader never sees a half-written file.
Hidden names (leading ``.`` or ``_``) are ignored when a Parquet folder is read, so a crashed
writer's leftovers never leak into a table.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from urllib.parse import urlparse
from typing import Any, Iterable

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

PARQUET_SUFFIX = ".parquet"
DEFAULT_PART = "part-00000.parquet"
_HIDDEN = (".", "_")


S3_OPTIONS = ("endpoint_url", "region", "profile")  # the portable ones; others pass through
_S3_PROTOCOLS = ("s3", "s3a")


def options_from_config(storage_cfg: Any) -> dict[str, Any]:
    """storage_options of a run (``StorageConfig``): endpoint_url, region, profile if set."""
    return {k: getattr(storage_cfg, k, None) for k in S3_OPTIONS
            if getattr(storage_cfg, k, None) is not None}


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def filesystem(uri: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``uri`` and the path inside it (local paths made absolute).

    ``endpoint_url``, ``region`` and ``profile`` are dropped for non-S3 URIs, so callers can
    always pass the run's storage options without checking the scheme first.
    """
    options = {k: v for k, v in storage_options.items() if v is not None}
    protocol = _protocol(uri)
    if protocol in _S3_PROTOCOLS:
        region = options.pop("region", None)
        if region is not None:  # s3fs takes the region through botocore's client kwargs
            options["client_kwargs"] = dict(options.get("client_kwargs") or {}, region_name=region)
    else:
        for key in S3_OPTIONS:
            options.pop(key, None)
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except ImportError as exc:
        package = {"gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
        hint = f"pip install {package}" if package else "install the fsspec backend for it"
        raise ImportError(f"cannot open {uri}: {protocol}:// needs an extra package ({hint})") from exc
    return fs, path.rstrip("/") or "/"


def pyarrow_filesystem(uri: str, **storage_options: Any) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for ``uri`` (Ray Data readers, Ray Train storage).

    Local paths get pyarrow's own; ``s3://`` gets pyarrow's native S3 client (endpoint and
    region from the options or the ``AWS_*`` variables, credentials from the standard chain),
    except with a ``profile``, which pyarrow cannot select: then, like every other scheme, the
    fsspec filesystem is wrapped, so both readers always see the same store.
    """
    fs, path = filesystem(uri, **storage_options)
    if is_local(fs):
        return pafs.LocalFileSystem(), path
    if _protocol(uri) in _S3_PROTOCOLS and not storage_options.get("profile"):
        kwargs: dict[str, Any] = {}
        endpoint = storage_options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
        region = storage_options.get("region") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def resolve(root: str, uri: str) -> str:
    """An image/file URI of a table, relative to the dataset ``root`` unless absolute."""
    return uri if "://" in uri or uri.startswith("/") else join(root, uri)


def join(uri: str, *parts: str) -> str:
    """Join URI path segments with ``/`` (never the OS separator; object keys use ``/``)."""
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def _fresh(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Forget cached listings around ``path``: s3fs answers exists/open from a folder listing
    it cached earlier, so a file another process (a Ray worker) wrote since would be "missing"."""
    if not is_local(fs):
        fs.invalidate_cache(posixpath.dirname(path))
        fs.invalidate_cache(path)


def exists(uri: str, **storage_options: Any) -> bool:
    fs, path = filesystem(uri, **storage_options)
    _fresh(fs, path)
    return fs.exists(path)


def remove(uri: str, **storage_options: Any) -> bool:
    """Delete the file at ``uri``; False if there was none."""
    fs, path = filesystem(uri, **storage_options)
    if not fs.exists(path):
        return False
    fs.rm(path)
    return True


# --------------------------------------------------------------------------------------------
# Atomic publication
# --------------------------------------------------------------------------------------------


def _publish(fs: fsspec.AbstractFileSystem, tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path``: a same-folder rename is atomic on POSIX; object stores have no
    rename, but a copy is one PUT that readers see whole or not at all."""
    if is_local(fs):
        fs.mv(tmp, path)
    else:
        fs.copy(tmp, path)
        fs.rm(tmp)


def _write_atomic(fs: fsspec.AbstractFileSystem, path: str, write) -> None:
    """Call ``write(file)`` on a hidden temporary file next to ``path``, then publish it."""
    folder, name = posixpath.split(path)
    if is_local(fs):
        fs.makedirs(folder, exist_ok=True)  # object stores have no folders to create
    tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
    try:
        with fs.open(tmp, "wb") as f:
            write(f)
        _publish(fs, tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_bytes(data: bytes, uri: str, **storage_options: Any) -> None:
    """Write ``data`` to the file at ``uri`` atomically (parent folders are created)."""
    fs, path = filesystem(uri, **storage_options)
    _write_atomic(fs, path, lambda f: f.write(data))


def read_bytes(uri: str, **storage_options: Any) -> bytes:
    fs, path = filesystem(uri, **storage_options)
    _fresh(fs, path)
    with fs.open(path, "rb") as f:
        return f.read()


def write_json(obj: Any, uri: str, **storage_options: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable bytes for the same object)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_bytes(text.encode("utf-8"), uri, **storage_options)


def read_json(uri: str, **storage_options: Any) -> Any:
    return json.loads(read_bytes(uri, **storage_options).decode("utf-8"))


# --------------------------------------------------------------------------------------------
# Parquet tables (a table is a folder of part files)
# --------------------------------------------------------------------------------------------


def list_parts(uri: str, **storage_options: Any) -> list[str]:
    """Sorted paths of the visible ``*.parquet`` files in the folder ``uri`` (not recursive)."""
    fs, path = filesystem(uri, **storage_options)
    _fresh(fs, path)
    return _parts(fs, path)


def _parts(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    if not fs.isdir(path):
        return []
    files = fs.ls(path, detail=False)
    return sorted(
        f.rstrip("/")
        for f in files
        if f.endswith(PARQUET_SUFFIX) and not posixpath.basename(f).startswith(_HIDDEN)
    )


def write_table(
    table: pa.Table,
    uri: str,
    *,
    part: str = DEFAULT_PART,
    mode: str = "overwrite",
    row_group_size: int | None = None,
    **storage_options: Any,
) -> str:
    """Publish ``table`` as the part file ``<uri>/<part>`` of the Parquet folder ``uri``.

    ``mode``: ``"overwrite"`` removes the folder's other parts *after* the new one is
    published (a reader sees the old table or the new one plus stale parts, never a partial
    file; a stage's manifest, written last, is what marks the whole output complete);
    ``"add"`` keeps the other parts (several writers, one part each); ``"error"`` refuses a
    folder that already holds parts. Returns the written file's path.
    """
    if mode not in ("overwrite", "add", "error"):
        raise ValueError(f"mode must be overwrite, add or error, got {mode!r}")
    if not part.endswith(PARQUET_SUFFIX) or "/" in part or part.startswith(_HIDDEN):
        raise ValueError(f"part must be a visible *.parquet file name, got {part!r}")
    fs, path = filesystem(uri, **storage_options)
    existing = _parts(fs, path)
    if mode == "error" and existing:
        raise FileExistsError(f"{uri} already holds {len(existing)} Parquet part(s)")
    target = posixpath.join(path, part)
    _write_atomic(fs, target, lambda f: pq.write_table(table, f, row_group_size=row_group_size))
    if mode == "overwrite":
        stale = [p for p in existing if p != target]
        if stale:
            fs.rm(stale)
    return target


def table_schema(uri: str, **storage_options: Any) -> pa.Schema:
    """The schema of a Parquet folder (its first visible part) without reading any rows."""
    fs, path = filesystem(uri, **storage_options)
    files = _parts(fs, path) if fs.isdir(path) else [path]
    if not files or not fs.exists(files[0]):
        raise FileNotFoundError(f"no Parquet table at {uri}")
    with fs.open(files[0], "rb") as f:
        return pq.read_schema(f)


def has_values(uri: str, column: str, **storage_options: Any) -> bool:
    """Whether ``column`` of the Parquet folder holds any non-null value, from the footers'
    statistics only (e.g. packed image bytes vs a ``bytes`` column that is all null)."""
    fs, path = filesystem(uri, **storage_options)
    for part in _parts(fs, path) if fs.isdir(path) else [path]:
        with fs.open(part, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        if column not in meta.schema.names:
            return False
        index = meta.schema.names.index(column)
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(index).statistics
            rows = meta.row_group(g).num_rows
            if stats is None or not stats.has_null_count or stats.null_count < rows:
                return True  # unknown counts as "has values": the reader copes with nulls
    return False


def read_table(
    uri: str,
    *,
    columns: Iterable[str] | None = None,
    filter: Any = None,
    **storage_options: Any,
) -> pa.Table:
    """Read a Parquet folder (all visible parts, in name order) or a single Parquet file.

    ``filter`` is a ``pyarrow.compute`` expression, e.g. ``pc.field("split") == "val"``.
    """
    fs, path = filesystem(uri, **storage_options)
    if fs.isdir(path):
        files = _parts(fs, path)
        if not files:
            raise FileNotFoundError(f"no Parquet parts in {uri}")
    elif fs.exists(path):
        files = [path]
    else:
        raise FileNotFoundError(f"no Parquet table at {uri}")
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    cols = list(columns) if columns is not None else None
    return dataset.to_table(columns=cols, filter=filter)

