"""The parts of an honest launch that need no Ray: signals, the Ray token file, the store
lock, and what the MLflow UI is given (dataset inputs, images, the study view)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablate.config import DataConfig
from ablate.launch.interrupts import Interrupted, StopSignals, stoppable
from ablate.launch.local_ray import private_token
from ablate.mlflow_ui import dataset_entity, sample_images, study_view_state
from ablate.ui_links import runs_page_url


def test_a_signal_outside_the_tuner_stops_at_once_with_its_exit_code() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped, StopSignals():
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_a_signal_inside_the_tuner_asks_ray_tune_to_stop_then_a_second_stops_at_once() -> None:
    asked: list[int] = []

    @stoppable
    def launch() -> None:
        from ablate.launch.interrupts import active_stop_signals

        stop = active_stop_signals()
        with stop.graceful():
            # what Tuner.fit installs: Ray Tune's "stop the run" handler
            signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))
            os.kill(os.getpid(), signal.SIGINT)
            assert asked == [signal.SIGUSR1] and stop.signum == signal.SIGINT
            assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"  # ours stays in place
            os.kill(os.getpid(), signal.SIGINT)  # impatient: stop now
            pytest.fail("a second signal must raise")

    with pytest.raises(Interrupted) as stopped:
        launch()
    assert stopped.value.exit_code == 130
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ


def test_the_ray_token_is_created_private_and_made_private(tmp_path: Path) -> None:
    token = tmp_path / ".ray" / "auth_token"
    paths: list[Path | None] = []
    threads = [
        threading.Thread(target=lambda: paths.append(private_token(token))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert paths == [token] * 8
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert len(token.read_text()) == 64 and int(token.read_text(), 16) >= 0  # 256-bit hex
    assert sorted(p.name for p in token.parent.iterdir()) == ["auth_token"]  # no temp left
    token.chmod(0o644)  # as Ray 2.60 writes it
    content = token.read_text()
    private_token(token)
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == content


def test_concurrent_first_use_creates_the_store_once(tmp_path: Path) -> None:
    """Several processes open a new sqlite store at once: one creates it, all agree."""
    code = (
        "import sys; from ablate import tracking; "
        "print(tracking.ensure_experiment(sys.argv[1], 'race', None))"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode()[-2000:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name("race")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    manifest = pd.DataFrame(
        {
            "subject": ["s0", "s0", "s1", "s2"],
            "slice": [0, 1, 0, 0],
            "split": ["train", "train", "val", "test"],
            "height": [32] * 4,
        }
    )
    manifest.to_parquet(root / "manifest.parquet", index=False)
    (root / "provenance.json").write_text(json.dumps({"format_version": 1}))
    return root


def test_dataset_inputs_name_their_source(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "tiny-0123")
    simulated = dataset_entity(DataConfig(preset="tiny", seed=3), root)
    assert simulated.name == "tiny-seed3" and simulated.source_type == "ablate-simulator"
    assert json.loads(simulated.source) == {"overrides": {}, "preset": "tiny", "seed": 3}
    profile = json.loads(simulated.profile)
    assert profile == {
        "slices": 4,
        "subjects": 3,
        "splits": {"train": 2, "val": 1, "test": 1},
        "image_size": 32,
        "units": "unknown",  # a provenance that records no units
    }
    imported = dataset_entity(DataConfig(path=root), root)
    assert imported.name == "tiny-0123" and imported.source_type == "local"
    assert json.loads(imported.source) == {"uri": root.resolve().as_uri()}
    assert imported.digest == simulated.digest and len(imported.digest) == 16
    (root / "provenance.json").write_text(json.dumps({"format_version": 1, "seed": 4}))
    assert dataset_entity(DataConfig(path=root), root).digest != imported.digest


def test_sample_images_are_8_bit_montages() -> None:
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 2, (4, 32, 32)).astype(np.float32)
    images = {
        "input": ref + 0.5,
        "reference": ref,
        "output": ref + 0.1,
        "sd_map": np.full_like(ref, 0.01),
    }
    out = sample_images(images)
    assert list(out) == ["test/input", "test/reference", "test/sample", "test/error", "test/sd"]
    for image in out.values():
        assert image.dtype == np.uint8 and image.shape == (128, 4 * 128 + 3 * 8)
    assert out["test/reference"].max() == 255 and out["test/input"].max() == 255  # clipped
    deterministic = sample_images({k: v for k, v in images.items() if k != "sd_map"})
    assert "test/sd" not in deterministic


def test_the_study_view_lists_trials_best_first_with_metric_columns() -> None:
    state = study_view_state()
    assert state["orderByKey"] == "metrics.`psnr`" and state["orderByAsc"] is False
    assert {"metrics.`psnr`", "metrics.`ssim`", "params.`row`"} <= set(state["selectedColumns"])
    assert runs_page_url("http://127.0.0.1:5000/", "7") == (
        "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=ablate-study"
        "&workflowType=machine_learning"
    )
