"""Storage I/O by location: a local path or an object-store URI (``s3://bucket/prefix``).

The one module that reads and writes ``--storage``: launch records, staged datasets and
shared caches go through it; Ray Tune writes trial checkpoints to the same location itself.
A URI is resolved by ``pyarrow.fs.FileSystem.from_uri``, the mechanism Ray Tune uses for its
``storage_path``, so both see the same filesystem. For S3 the endpoint and credentials come
from the standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, or ``~/.aws``); only standard S3 calls are made,
so AWS S3, MinIO, Ceph or moto work the same.

Locations are strings: a URI stays a URI (``Path`` would turn ``s3://`` into ``s3:/``); a
local path is made absolute.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from ablate.errors import UserError

T = TypeVar("T")
log = logging.getLogger(__name__)


class StorageError(UserError):
    """The storage is unreachable, not writable, or unsafe."""


def is_uri(location: str | os.PathLike) -> bool:
    """``scheme://...`` (s3, gs, ...): an object store; ``file://`` counts as local."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def normalize(location: str | os.PathLike) -> str:
    """A URI without its trailing slash, or an absolute local path."""
    text = str(location)
    if is_uri(text):
        return text.rstrip("/")
    return str(Path(text.removeprefix("file://")).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a URI or a local path (a URI keeps its query string last)."""
    if is_uri(base):
        head, sep, query = base.partition("?")
        return "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query
    return str(Path(base, *parts))


def _fs(location: str) -> tuple[pafs.FileSystem, str]:
    if not is_uri(location):
        return pafs.LocalFileSystem(), normalize(location)
    try:
        return pafs.FileSystem.from_uri(location)
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot open storage {location}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _wrap(location: str, action: str, exc: BaseException) -> StorageError:
    return StorageError(
        f"cannot {action} {location}: {_first_line(exc)} (check --storage, the object store's "
        "endpoint and the AWS_* credentials)"
    )


def exists(location: str) -> bool:
    fs, path = _fs(location)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise _wrap(location, "read", exc) from None


def read_bytes(location: str) -> bytes:
    fs, path = _fs(location)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        if not exists(location):
            raise FileNotFoundError(location) from None
        raise _wrap(location, "read", exc) from None


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole object; a local file is written to a temporary name and renamed, an
    object is one PUT: either way a reader sees the old or the new content, never a part."""
    if not is_uri(location):
        path = Path(normalize(location))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, path = _fs(location)
    try:
        with fs.open_output_stream(path) as fh:
            fh.write(data)
    except OSError as exc:
        raise _wrap(location, "write", exc) from None


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def delete(location: str) -> None:
    fs, path = _fs(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _wrap(location, "delete", exc) from None


def list_folders(location: str) -> list[str]:
    """Names of the folders (object prefixes) directly under ``location``; [] if none."""
    fs, path = _fs(location)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise _wrap(location, "list", exc) from None
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def upload(local: Path, location: str) -> None:
    """Copy a local file or folder to ``location`` (a folder recursively)."""
    fs, path = _fs(location)
    try:
        if Path(local).is_dir():
            pafs.copy_files(str(Path(local).resolve()), path, destination_filesystem=fs)
        else:
            with open(local, "rb") as src, fs.open_output_stream(path) as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
    except OSError as exc:
        raise _wrap(location, "write", exc) from None


def download(location: str, local: Path) -> None:
    """Copy the file or folder at ``location`` to the local path ``local``."""
    fs, path = _fs(location)
    local = Path(local)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(location)
        local.parent.mkdir(parents=True, exist_ok=True)
        if info.type == pafs.FileType.Directory:
            pafs.copy_files(path, str(local.resolve()), source_filesystem=fs)
        else:
            with fs.open_input_stream(path) as src, open(local, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _wrap(location, "read", exc) from None


def retrying(call: Callable[[], T], location: str, action: str, wait_s: float) -> T:
    """``call()``, which reads or writes ``location``. On an object store it is retried with
    backoff while it fails with an ``OSError`` other than ``FileNotFoundError`` (the store is
    unreachable: pyarrow's S3 client gives up within a second on a refused connection), for
    at most ``wait_s`` seconds; then a one-line :class:`StorageError` naming ``location``
    and ``action``. An outage shorter than ``wait_s`` then costs a pause, not a failed
    trial. A local or shared path is not waited for: its errors (a full disk) do not pass."""
    if not is_uri(location):
        return call()
    deadline = time.monotonic() + wait_s
    delay = 1.0
    while True:
        try:
            return call()
        except FileNotFoundError:  # an answer, not an outage
            raise
        except OSError as exc:
            if time.monotonic() + delay > deadline:
                raise StorageError(
                    f"storage {location} unreachable for {wait_s:.0f} s, could not {action}: "
                    f"{_first_line(exc)}"
                ) from None
            log.warning("storage %s unreachable (%s); retrying", location, _first_line(exc))
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def node_dir() -> Path:
    """This node's own folder for rebuilt datasets and fetched caches (never shared):
    ``$ABLATE_CACHE_DIR``, else ``~/.cache/ablate``."""
    return Path(os.environ.get("ABLATE_CACHE_DIR") or Path.home() / ".cache" / "ablate")


def _check_endpoint(timeout_s: float) -> None:
    """Fail in seconds when ``AWS_ENDPOINT_URL`` names a host nobody listens on (the S3
    client itself retries for a long time)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return
    url = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            pass
    except OSError:
        raise StorageError(
            f"cannot reach the object store at {endpoint} (AWS_ENDPOINT_URL): start it or "
            "fix the endpoint"
        ) from None


def check_writable(location: str, timeout_s: float = 5.0) -> None:
    """Write and delete a probe object under ``location``; refuse a local folder that other
    users can write (``ablate resume`` unpickles Ray's state from it)."""
    if is_uri(location):
        if urlparse(location).scheme == "s3":
            _check_endpoint(timeout_s)
    else:
        check_private(location)
    probe = join(location, f".ablate-probe-{uuid.uuid4().hex[:12]}")
    try:
        write_text(probe, "probe")
        delete(probe)
    except StorageError as exc:
        raise StorageError(
            f"storage {location} is not writable: {exc} (fix --storage or its permissions)"
        ) from None
    except OSError as exc:
        raise StorageError(
            f"storage {location} is not writable: {_first_line(exc)} "
            "(fix --storage or its permissions)"
        ) from None


def check_private(location: str) -> None:
    """Refuse a local storage folder (or its nearest existing parent) writable by other
    users: whoever can write it can make ``ablate resume`` run code (Ray's ``tuner.pkl``)."""
    path = Path(normalize(location))
    while not path.exists() and path != path.parent:
        path = path.parent
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH and not (path != Path(normalize(location)) and mode & stat.S_ISVTX):
        raise StorageError(
            f"storage folder {path} is writable by other users; ablate resume unpickles Ray's "
            f"state from it: chmod o-w {path} or pick a private --storage"
        )
