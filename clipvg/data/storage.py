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

**One resolution for every command.** Every entry point (``train-local``, ``train``,
``pipeline``, ``score``, ``synth``, ``validate``, ``import-official`` / ``export-official``)
takes its options from :func:`options_from_config` - the run's ``storage.*``, with a command's
``--endpoint-url`` flag, where it has one, in place of ``storage.endpoint_url`` - and calls
:func:`check_access` on the URIs it will touch before doing any work: a malformed URI
(``s3:/bucket``, what ``Path("s3://bucket")`` makes of one) or an object store that cannot be
reached fails at once with a :class:`~clipvg.errors.UserError` naming the endpoint, instead of
a traceback minutes later or a write that went to another endpoint. A URI is never turned into
a local path: local files are written only under local paths (or a local cache folder that is
then published with these functions).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import sys
import uuid
from typing import Any, Iterable
from urllib.parse import urlparse

import fsspec
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from clipvg.errors import UserError

PARQUET_SUFFIX = ".parquet"
DEFAULT_PART = "part-00000.parquet"
_HIDDEN = (".", "_")


S3_OPTIONS = ("endpoint_url", "region", "profile")  # the portable ones; others pass through
_S3_PROTOCOLS = ("s3", "s3a")


def options_from_config(storage_cfg: Any = None, *, endpoint_url: str | None = None) -> dict[str, Any]:
    """The storage options of a run or command: ``endpoint_url``, ``region``, ``profile`` of its
    ``StorageConfig`` where set, with a command's ``--endpoint-url`` flag (``endpoint_url``, when
    given) in place of ``storage.endpoint_url``. Unset options are left to the standard chain
    (``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``~/.aws``), which every client here honours
    too. This is the one resolution of ``storage.*``: every entry point uses it."""
    given = {} if storage_cfg is None else {"endpoint_url": storage_cfg.endpoint_url,
                                            "region": storage_cfg.region, "profile": storage_cfg.profile}
    options = {k: v for k, v in given.items() if v is not None}
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return options


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def is_uri(path: str) -> bool:
    """Whether ``path`` names an object in a store (``s3://...``), not a local path."""
    return "://" in str(path) and _protocol(str(path)) != "file"


def local_path(uri: str) -> str | None:
    """The local path of ``uri`` (a plain path or ``file://``), or None for a store URI."""
    uri = str(uri)
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None if "://" in uri else uri


# "s3:/bucket/key": what pathlib makes of "s3://bucket/key" (it collapses the double slash)
_MANGLED_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")


def endpoint_of(**storage_options: Any) -> str:
    """The S3 endpoint a client given ``storage_options`` talks to, for messages."""
    endpoint = storage_options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL")
    return endpoint or "the AWS default endpoint (no storage.endpoint_url, no AWS_ENDPOINT_URL)"


def check_uri(uri: str) -> None:
    """Refuse a mangled URI (``s3:/bucket``) before anything creates a local folder named so."""
    if _MANGLED_URI.match(str(uri)):
        raise UserError(f"{uri!r} looks like a URI with one slash too few (did you mean "
                        f"{re.sub(r':/', '://', str(uri), count=1)!r}?); nothing was written")


def check_access(*uris: str | None, **storage_options: Any) -> None:
    """Fail fast, before any work, when one of ``uris`` cannot be used.

    Mangled URIs are refused (:func:`check_uri`); for each ``s3://`` URI the bucket is listed
    once (one request, no retries, 5 s to connect) at the endpoint ``storage_options`` name, so a
    wrong ``storage.endpoint_url``, a missing bucket or missing credentials end in one
    :class:`~clipvg.errors.UserError` naming the endpoint - and nothing is sent anywhere else.
    Local paths and other schemes are only checked for mangling. None entries are skipped.
    """
    checked: set[tuple[str, str]] = set()
    for uri in uris:
        if uri is None:
            continue
        check_uri(uri)
        if _protocol(uri) not in _S3_PROTOCOLS:
            continue
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        endpoint = endpoint_of(**storage_options)
        if (bucket, endpoint) in checked:
            continue
        checked.add((bucket, endpoint))
        fs, _ = filesystem(uri, skip_instance_cache=True, **storage_options, config_kwargs={
            "connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 1}})
        fs.retries = 1  # this instance only (skip_instance_cache): s3fs's own retry loop
        try:
            fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key.strip("/"), MaxKeys=1)
        except Exception as e:  # botocore / aiohttp errors, or s3fs's translations of them
            hint = "check storage.endpoint_url / --endpoint-url, the bucket and the credentials"
            if _unreachable(e):
                raise UserError(f"cannot reach the S3 endpoint {endpoint} (for {uri}): "
                                f"{type(e).__name__}; {hint}") from None
            detail = " ".join(str(e).split()) or type(e).__name__
            raise UserError(f"cannot use {uri} at the S3 endpoint {endpoint}: "
                            f"{type(e).__name__}: {detail[:200]}; {hint}") from None


def _unreachable(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it) is a failure to connect, not an answer."""
    botocore = sys.modules.get("botocore.exceptions")
    kinds = tuple(k for k in (getattr(botocore, "ConnectionError", None),
                              getattr(botocore, "ConnectTimeoutError", None)) if k is not None)
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, (ConnectionError, TimeoutError, *kinds)):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


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


def refuse_existing(out: str, names: Iterable[str] | None = None, *, overwrite: bool,
                    **storage_options: Any) -> list[str]:
    """The outputs of a command that already exist - ``out`` itself, or its entries ``names`` -
    refused with a one-line :class:`~clipvg.errors.UserError` naming them and ``--overwrite``
    unless ``overwrite`` (then returned, for the command to replace). Called before any work, so
    a refusal changes nothing."""
    uris = [out] if names is None else [join(out, name) for name in names]
    found = [uri for uri in uris if exists(uri, **storage_options)]
    if found and not overwrite:
        raise UserError(f"{', '.join(found)} already exist{'s' if len(found) == 1 else ''} (the "
                        f"output of an earlier run): write to another output, or replace "
                        f"{'it' if len(found) == 1 else 'them'} with --overwrite")
    return found


def remove(uri: str, **storage_options: Any) -> bool:
    """Delete the file at ``uri``; False if there was none."""
    fs, path = filesystem(uri, **storage_options)
    if not fs.exists(path):
        return False
    fs.rm(path)
    return True


def remove_tree(uri: str, **storage_options: Any) -> bool:
    """Delete the folder (or prefix) ``uri`` with everything under it; False if there was none."""
    fs, path = filesystem(uri, **storage_options)
    _fresh(fs, path)
    if not fs.exists(path):
        return False
    fs.rm(path, recursive=True)
    _fresh(fs, path)
    return True


def upload_folder(folder: str | os.PathLike, uri: str, *, last: Iterable[str] = (),
                  **storage_options: Any) -> None:
    """Publish the files of the local ``folder`` (recursively) under ``uri``; the relative paths
    in ``last`` go after every other file (a completeness marker such as ``state.json``), and
    their old copies are removed first, so a reader never sees an old marker next to new files."""
    root = str(folder)
    files = sorted(os.path.relpath(os.path.join(d, f), root)
                   for d, _, names in os.walk(root) for f in names)
    last = [name for name in last]
    for name in last:
        remove(join(uri, name), **storage_options)
    for name in sorted(files, key=lambda n: (n in last, n)):
        with open(os.path.join(root, name), "rb") as f:
            write_bytes(f.read(), join(uri, *name.split(os.sep)), **storage_options)


def download_folder(uri: str, folder: str | os.PathLike, **storage_options: Any) -> bool:
    """Copy the files under ``uri`` (recursively) into the local ``folder``; False if none."""
    fs, path = filesystem(uri, **storage_options)
    _fresh(fs, path)
    if not fs.isdir(path):
        return False
    found = False
    for remote in sorted(fs.find(path)):
        rel = posixpath.relpath(remote, path)
        if posixpath.basename(rel).startswith(".tmp-"):  # a crashed writer's temp file
            continue
        target = os.path.join(str(folder), *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with fs.open(remote, "rb") as src, open(target, "wb") as dst:
            dst.write(src.read())
        found = True
    return found


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
    cols = list(columns) if columns is not None else None
    try:
        return pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=cols, filter=filter)
    except pa.ArrowInvalid as e:  # a truncated or foreign file: not a bug, the table is bad
        raise UserError(f"cannot read the Parquet table {uri}: {str(e).splitlines()[0]}") from None

