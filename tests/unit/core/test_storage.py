"""Storage by location (local path or s3:// URI), the dataset content hash, and the
preflight checks that need no cluster."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ablate import storage, tracking
from ablate.errors import UserError
from ablate.launch import preflight
from ablate.shared_cache import SharedCache
from ablate.storage import StorageError
from ablate.workspace import Workspace
from tests.paths import REPO


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


@pytest.mark.slow  # waits out a real outage
def test_an_object_store_outage_is_waited_out_then_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``storage.retrying`` (trials' checkpoint uploads and restores) waits for an object
    store that comes up meanwhile, and gives up with one line when it does not."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] not installed")
    import pyarrow.fs as pafs

    port = _free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    for key, value in (("AWS_ACCESS_KEY_ID", "t"), ("AWS_SECRET_ACCESS_KEY", "t")):
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    fs, _ = pafs.FileSystem.from_uri("s3://ablate/x")
    with pytest.raises(StorageError, match="unreachable for 1 s, could not read") as err:
        storage.retrying(lambda: fs.get_file_info("ablate/x"), "s3://ablate", "read", 1)
    assert "\n" not in str(err.value)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    later = threading.Timer(2.0, server.start)
    later.start()
    try:
        info = storage.retrying(lambda: fs.get_file_info("ablate/x"), "s3://ablate", "read", 60)
        assert info.type == pafs.FileType.NotFound
    finally:
        later.join()
        server.stop()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1, with one bucket; yields the AWS_* environment."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] not installed")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="ablate")
    yield env
    server.stop()


@pytest.fixture
def s3(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    return "s3://ablate"


def test_s3_round_trip_on_a_local_server(s3: str, tmp_path: Path) -> None:
    root = f"{s3}/runs"
    preflight.check_storage(root)
    storage.write_text(storage.join(root, "x", "record.json"), '{"a": 1}')
    assert storage.read_text(storage.join(root, "x", "record.json")) == '{"a": 1}'
    assert storage.exists(storage.join(root, "x", "record.json"))
    assert not storage.exists(storage.join(root, "nope.json"))
    with pytest.raises(FileNotFoundError):
        storage.read_text(storage.join(root, "nope.json"))
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f.bin").write_bytes(b"\0" * 10)
    storage.upload(folder, storage.join(root, "up"))
    storage.download(storage.join(root, "up"), tmp_path / "down")
    assert (tmp_path / "down" / "sub" / "f.bin").read_bytes() == b"\0" * 10
    with pytest.raises(UserError, match="not writable"):
        preflight.check_storage("s3://no-such-bucket/x")
    assert storage.list_folders(root) == ["up", "x"]
    assert storage.list_folders(f"{root}/nothing-here") == []


def test_launch_records_are_found_by_uri(s3: str) -> None:
    from ablate import launches

    root = f"{s3}/launches"
    storage.write_text(storage.join(root, "grid-a", launches.LAUNCH_RECORD), '{"kind": "launch"}')
    storage.write_text(storage.join(root, "not-a-launch", "x.txt"), "x")
    assert launches.launch_names(root) == ["grid-a"]
    assert launches.read_launch_record(root, "grid-a") == {"kind": "launch"}
    with pytest.raises(UserError, match="no launch named 'nope'"):
        launches.read_launch_record(root, "nope")


def _fake_dataset(root: Path, value: float = 1.0) -> Path:
    import numpy as np
    import pandas as pd

    (root / "subjects" / "s0").mkdir(parents=True)
    pd.DataFrame({"subject": ["s0"], "slice": [0]}).to_parquet(root / "manifest.parquet")
    np.save(root / "subjects" / "s0" / "spet.npy", np.full((1, 4, 4), value, np.float32))
    return root


def test_imported_dataset_is_staged_once_and_fetched_by_each_node(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ablate.config import DataConfig
    from ablate.data import staging

    imported = _fake_dataset(tmp_path / "imported")
    sha = staging.content_hash(imported)
    staged = staging.stage_dataset(imported, sha, f"{s3}/store")
    assert staged.startswith(f"{s3}/store/datasets/")

    def no_upload(*args: object) -> None:
        raise AssertionError("a staged dataset is uploaded once")

    monkeypatch.setattr(storage, "upload", no_upload)
    assert staging.stage_dataset(imported, sha, f"{s3}/store") == staged
    for node in ("a", "b"):
        monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / node))
        root = staging.node_dataset(DataConfig(), "/driver/only", f"{s3}/store", sha, staged)
        assert root.is_relative_to(tmp_path / node)
        assert staging.content_hash(root) == sha
        assert (root / "subjects" / "s0" / "spet.npy").is_file()


def test_a_node_whose_rebuilt_dataset_differs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ablate.config import DataConfig
    from ablate.data import staging

    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "node"))
    rebuilt = _fake_dataset(tmp_path / "node" / "datasets" / "tiny-x", value=2.0)
    monkeypatch.setattr(staging, "build_dataset", lambda data, folder: rebuilt)
    with pytest.raises(UserError, match="content hash .* but the launch recorded"):
        staging.node_dataset(DataConfig(), "/driver/only", "s3://b/p", "0" * 64, "")
    # local storage: the driver's folder is used as it is (a shared disk)
    assert staging.node_dataset(DataConfig(), str(tmp_path), str(tmp_path), "", "") == tmp_path


def test_pmdm_estimator_cache_travels_through_object_storage(
    s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ablate.methods.pmdm as pmdm
    from ablate.data.staging import HASH_FILE
    from tests.unit.core.test_pmdm_estimator import new_pmdm
    from tests.unit.core.test_pmdm_rows import PairDataset

    data = PairDataset(6, seed=1, split="train")
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "node-a"))
    first = new_pmdm()
    first.prepare(data, SharedCache(f"{s3}/cache"), seed=0)
    assert first.estimator_trained and first.estimator_path.is_relative_to(tmp_path / "node-a")
    assert storage.exists(f"{s3}/cache/{first.estimator_path.name}")

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("node b should fetch the estimator node a trained")

    monkeypatch.setattr(pmdm, "train_estimator", no_training)
    monkeypatch.setenv("ABLATE_CACHE_DIR", str(tmp_path / "node-b"))
    second = new_pmdm()
    second.prepare(data, SharedCache(f"{s3}/cache"), seed=0)
    assert not second.estimator_trained
    assert second.estimator_path.is_relative_to(tmp_path / "node-b")
    for name, value in first.estimator.state_dict().items():
        assert (second.estimator.state_dict()[name] == value).all()
    # a dataset with a known content hash keys the estimator by content, not by its path
    for node in ("x", "y"):
        root = _fake_dataset(tmp_path / node / "ds")
        (root / HASH_FILE).write_text("f" * 64)
    a = pmdm.data_fingerprint(type("D", (), {"root": tmp_path / "x" / "ds", "split": "train"}))
    b = pmdm.data_fingerprint(type("D", (), {"root": tmp_path / "y" / "ds", "split": "train"}))
    assert a == b and "root" not in a


def test_tracking_server_unreachable_is_one_line() -> None:
    started = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach the MLflow tracking server"):
        tracking.check_server(f"http://127.0.0.1:{_free_port()}")
    assert time.perf_counter() - started < 10
    tracking.check_server("sqlite:///x.db")  # embedded: nothing to reach


def test_server_mode_leaves_artifacts_to_the_server(tmp_path: Path) -> None:
    assert Workspace.at(tmp_path, "http://127.0.0.1:5000").artifact_root is None
    assert Workspace.at(tmp_path, "sqlite:///x.db").artifact_root.startswith("file://")


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


def test_launch_preflight_fails_before_any_run_or_record(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ablate.cli import app

    space = REPO / "search_spaces" / "demo.yaml"
    runs = tmp_path / "runs"
    runner = CliRunner()
    started = time.perf_counter()
    server = f"http://127.0.0.1:{_free_port()}"
    result = runner.invoke(
        app, ["run", str(space), "--tracking-uri", server, "--workdir", str(runs)]
    )
    assert result.exit_code == 2 and "cannot reach the MLflow tracking server" in result.output
    assert "Traceback" not in result.output
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    result = runner.invoke(
        app, ["run", str(space), "--storage", str(shared), "--workdir", str(runs)]
    )
    assert result.exit_code == 2 and "writable by other users" in result.output
    assert time.perf_counter() - started < 30
    assert not (runs / "mlflow.db").exists() and not list(shared.iterdir())


@pytest.mark.slow
def test_a_node_without_the_project_is_named_before_any_trial(ray_cluster) -> None:
    preflight.check_nodes("trainables.ablation")  # every node of the test cluster has it
    with pytest.raises(UserError, match=r"Ray node\(s\) .*No module named 'no_such_pkg'.*install"):
        preflight.check_nodes(module="no_such_pkg.trainable")
