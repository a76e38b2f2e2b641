"""Storage by location (local path or s3:// URI), the dataset content hash, and the
preflight checks that need no cluster."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from ablate import preflight, storage, tracking
from ablate.errors import UserError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_locations_keep_their_scheme(tmp_path: Path) -> None:
    assert storage.normalize("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert storage.join("s3://bucket/prefix", "run", "a.json") == "s3://bucket/prefix/run/a.json"
    assert storage.join("s3://b/p?endpoint_override=x", "r") == "s3://b/p/r?endpoint_override=x"
    assert storage.normalize(tmp_path / "x" / ".." / "y") == str(tmp_path / "y")
    assert storage.is_uri("s3://b") and not storage.is_uri(str(tmp_path))


def test_local_round_trip_and_probe(tmp_path: Path) -> None:
    where = storage.join(str(tmp_path), "a", "b.txt")
    assert not storage.exists(where)
    storage.write_text(where, "hello")
    assert storage.exists(where) and storage.read_text(where) == "hello"
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(str(tmp_path), "missing"))
    storage.check_writable(str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["a", "new"]  # the probe is gone


def test_storage_writable_by_others_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UserError, match="writable by other users.*chmod o-w"):
        storage.check_writable(str(shared))
    with pytest.raises(UserError, match="writable by other users"):
        storage.check_writable(str(shared / "not-yet"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission")
def test_storage_not_writable_is_one_line(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(UserError, match="not writable"):
        preflight.check_storage(str(ro))


def test_unreachable_object_store_fails_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    started = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach the object store"):
        preflight.check_storage("s3://bucket/prefix")
    assert time.perf_counter() - started < 10


def test_s3_round_trip_on_a_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server_mod = pytest.importorskip("moto.server", reason="moto[server] not installed")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="ablate")
        root = "s3://ablate/runs"
        preflight.check_storage(root)
        storage.write_text(storage.join(root, "x", "record.json"), '{"a": 1}')
        assert storage.read_text(storage.join(root, "x", "record.json")) == '{"a": 1}'
        assert storage.exists(storage.join(root, "x", "record.json"))
        assert not storage.exists(storage.join(root, "nope.json"))
        folder = tmp_path / "folder"
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "f.bin").write_bytes(b"\0" * 10)
        storage.upload(folder, storage.join(root, "up"))
        storage.download(storage.join(root, "up"), tmp_path / "down")
        assert (tmp_path / "down" / "sub" / "f.bin").read_bytes() == b"\0" * 10
        with pytest.raises(UserError, match="not writable"):
            preflight.check_storage("s3://no-such-bucket/x")
    finally:
        server.stop()


def test_tracking_server_unreachable_is_one_line() -> None:
    started = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        preflight.check_tracking(f"http://127.0.0.1:{_free_port()}")
    assert time.perf_counter() - started < 10
    preflight.check_tracking("sqlite:///x.db")  # embedded: nothing to reach


def test_server_mode_leaves_artifacts_to_the_server(tmp_path: Path) -> None:
    assert tracking.artifact_root(tmp_path, "http://127.0.0.1:5000") is None
    assert tracking.artifact_root(tmp_path, "sqlite:///x.db").startswith("file://")


def test_dataset_content_hash_is_stable_and_remembered(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    from ablate.data.staging import HASH_FILE, content_hash

    root = tmp_path / "ds"
    (root / "subjects" / "s0").mkdir(parents=True)
    pd.DataFrame({"subject": ["s0"], "slice": [0]}).to_parquet(root / "manifest.parquet")
    np.save(root / "subjects" / "s0" / "spet.npy", np.ones((1, 4, 4), np.float32))
    first = content_hash(root)
    assert not (root / HASH_FILE).exists()
    assert content_hash(root, remember=True) == first and (root / HASH_FILE).is_file()
    np.save(root / "subjects" / "s0" / "spet.npy", np.zeros((1, 4, 4), np.float32))
    (root / HASH_FILE).unlink()
    assert content_hash(root) != first
