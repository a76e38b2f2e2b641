"""Results export: a real sqlite MLflow store written here, read back as one line per trial.

``write_study`` / ``write_search`` build the stores the table and dashboard tests share.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from ablate.errors import UserError
from dashboards.results import load_histories, load_results, read_results, save_results

#: Final PSNR per row and seed; other metrics derive from it so the tests can recompute them.
PSNR = {
    "cpm": {0: 24.0, 1: 24.5, 2: 23.8},
    "sr3": {0: 23.0, 1: 23.4, 2: 23.1},
    "cpm_irm": {0: 25.0, 1: 25.2, 2: 24.9},
}
ROWS = ["cpm", "sr3", "cpm_irm", "broken", "cpm_irm_nas"]  # search-space order, not sorted
STOCHASTIC = {"sr3", "cpm_irm", "cpm_irm_nas"}
PARAMS_M = {"cpm": 0.20, "sr3": 1.10, "cpm_irm": 0.35, "cpm_irm_nas": 0.40, "broken": 0.5}
GMACS = {"cpm": 0.05, "sr3": 4.0, "cpm_irm": 0.6, "cpm_irm_nas": 0.65, "broken": 0.7}
NAS_PSNR = 25.6  # cpm_irm_nas: one completed seed, so it is tested over slices
N_SLICES = 12


def trial_metrics(row: str, psnr: float) -> dict[str, float]:
    metrics = {
        "psnr": psnr,
        "ssim": 0.9 + psnr / 1000,
        "nmse": 0.1 - psnr / 1000,
        "nrmse": float(np.sqrt(0.1 - psnr / 1000)),
        "paper_psnr": psnr + 1.0,
        "paper_ssim": 0.91 + psnr / 1000,
        "paper_nmse": 0.09 - psnr / 1000,
        "params_m": PARAMS_M[row],
        "gmacs": GMACS[row],
        "train_s": 10.0 + psnr,
        "train_it_per_s": 5.0,
    }
    if row in STOCHASTIC:
        metrics |= {"ams_psnr": psnr + 0.3, "ams_paper_psnr": psnr + 1.3, "sd": 3e-3}
        metrics |= {"ams_ssim": 0.91 + psnr / 1000, "ams_nmse": 0.095 - psnr / 1000}
        metrics |= x0_diagnostic(psnr)
    return metrics


def x0_diagnostic(psnr: float) -> dict[str, float]:
    """The per-noise-level diagnostic a diffusion trial logs: 8 levels, clean to noisy."""
    gammas = np.geomspace(0.99, 1e-4, 8)
    return {
        **{f"x0_gamma/level_{i}": float(g) for i, g in enumerate(gammas)},
        **{f"x0_psnr/level_{i}": psnr + 12 + 3 * float(np.log10(g)) for i, g in enumerate(gammas)},
    }


def slice_psnr(row: str, seed: int) -> np.ndarray:
    """Per-slice PSNR of a trial (deterministic), around the trial's final PSNR."""
    rng = np.random.default_rng(len(row) * 10 + seed)
    base = NAS_PSNR if row == "cpm_irm_nas" else PSNR[row][seed]
    return base + rng.normal(0, 0.5, N_SLICES)


def _log_trial(
    client: MlflowClient,
    exp_id: str,
    parent: str,
    row: str,
    seed: int,
    tmp: Path,
    *,
    status: str = "completed",
    error: str = "",
    metrics: dict[str, float] | None = None,
    extra_params: dict[str, str] | None = None,
    slices: np.ndarray | None = None,
    samples: bool = False,
) -> str:
    tags = {
        "mlflow.parentRunId": parent,
        "ablate.kind": "trial",
        "ablate.row": row,
        "ablate.seed": str(seed),
        "ablate.status": status,
    }
    if error:
        tags["ablate.error"] = error
    run = client.create_run(exp_id, run_name=f"{row}-s{seed}", tags=tags)
    run_id = run.info.run_id
    params = {"row": row, "seed": str(seed), "model.irm_width": "8", "train.steps": "20"}
    params |= {"row.nas": str(row.endswith("nas"))} | (extra_params or {})
    client.log_batch(
        run_id,
        params=[Param(k, v) for k, v in params.items()],
        metrics=[Metric(k, v, 0, 0) for k, v in (metrics or {}).items()],
    )
    if status == "completed":
        history = [Metric("loss", 1.0 / (1 + step) + seed * 0.01, 0, step) for step in range(5)]
        history += [Metric("loss/main", 0.5 / (1 + step), 0, step) for step in range(5)]
        client.log_batch(run_id, metrics=history)
    if slices is not None:
        frame = pd.DataFrame(
            {"slice": np.arange(len(slices)), "subject": "s07", "psnr": slices}
        ).assign(paper_psnr=slices + 1.0)
        path = tmp / f"{run_id}-slices" / "test_metrics.parquet"
        path.parent.mkdir()
        frame.to_parquet(path)
        client.log_artifact(run_id, str(path))
    if samples:
        rng = np.random.default_rng(seed)
        arrays = {k: rng.random((2, 16, 16)).astype(np.float32) for k in ("input", "reference")}
        arrays["output"] = arrays["reference"] + 0.05 * rng.standard_normal((2, 16, 16))
        if row in STOCHASTIC:
            arrays["sd_map"] = 0.01 * rng.random((2, 16, 16)).astype(np.float32)
        path = tmp / f"{run_id}-samples" / "samples.npz"
        path.parent.mkdir()
        np.savez(path, **arrays)
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED" if status == "completed" else "FAILED")
    return run_id


def write_study(root: Path, name: str = "study") -> str:
    """A finished grid: 3 seeds of three rows, a failed row, a row tested over slices."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
    parent = client.create_run(exp_id, run_name="launch", tags={"ablate.kind": "launch"})
    pid = parent.info.run_id
    client.log_param(pid, "rows", ",".join(ROWS))
    tmp = root / "staging"
    tmp.mkdir()
    for row, seeds in PSNR.items():
        for seed, psnr in seeds.items():
            slices = slice_psnr(row, seed) if row == "cpm" else None
            _log_trial(
                client,
                exp_id,
                pid,
                row,
                seed,
                tmp,
                metrics=trial_metrics(row, psnr),
                slices=slices,
                samples=seed == 0,
            )
    for seed in (0, 1):
        _log_trial(client, exp_id, pid, "broken", seed, tmp, status="failed", error="NaN loss")
    _log_trial(
        client,
        exp_id,
        pid,
        "cpm_irm_nas",
        0,
        tmp,
        metrics=trial_metrics("cpm_irm_nas", NAS_PSNR),
        slices=slice_psnr("cpm_irm_nas", 0),
        samples=True,
    )
    # completed but never logged its metrics: must show as failed, not vanish
    _log_trial(client, exp_id, pid, "cpm_irm_nas", 1, tmp, metrics={"params_m": 0.4})
    client.set_terminated(pid)
    return uri


def write_search(root: Path, name: str = "search") -> str:
    """An Optuna search over loss.k of one row, with its journal storage named by the parent."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(name, artifact_location=(root / "mlartifacts").as_uri())
    journal = root / "optuna.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.optimize(
        lambda t: (
            25
            - (np.log10(t.suggest_float("loss.k", 1e-6, 1e-3, log=True)) + 4.5) ** 2
            + 0.1 * t.suggest_float("loss.m", 0.1, 2.0)
        ),
        n_trials=8,
    )
    tags = {
        "ablate.kind": "search",
        "ablate.optuna_storage": f"journal:{journal}",
        "ablate.optuna_study": name,
    }
    pid = client.create_run(exp_id, run_name="search", tags=tags).info.run_id
    client.log_param(pid, "rows", "cpm_irm")
    tmp = root / "staging-search"
    tmp.mkdir()
    for trial in study.trials:
        extra = {"loss.k": str(trial.params["loss.k"]), "loss.m": str(trial.params["loss.m"])}
        _log_trial(
            client,
            exp_id,
            pid,
            "cpm_irm",
            trial.number,
            tmp,
            metrics=trial_metrics("cpm_irm", float(trial.value)),
            extra_params=extra,
        )
    client.set_terminated(pid)
    return uri


_STORES: dict[str, str] = {}


def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store per test session for every dashboards test module (a new sqlite store costs
    seconds of schema migration)."""
    if "uri" not in _STORES:
        root = tmp_path_factory.mktemp("study")
        _STORES["uri"] = write_study(root)
        write_search(root)
    return _STORES["uri"]


@pytest.fixture
def study_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return shared_store(tmp_path_factory)


def test_results_one_line_per_trial_in_search_space_order(study_uri: str, tmp_path: Path) -> None:
    df = load_results(study_uri, "study")
    assert len(df) == 3 * 3 + 2 + 2
    assert list(dict.fromkeys(df["row"])) == ROWS
    assert df["row_index"].is_monotonic_increasing
    cpm = df[df["row"] == "cpm"]
    assert cpm["seed"].tolist() == [0, 1, 2]
    assert cpm["metrics.psnr"].tolist() == [24.0, 24.5, 23.8]
    assert cpm["run_name"].tolist() == ["cpm-s0", "cpm-s1", "cpm-s2"]
    assert cpm["params.model.irm_width"].eq("8").all()
    assert cpm["parent_run_id"].nunique() == 1
    broken = df[df["row"] == "broken"]
    assert broken["status"].eq("failed").all() and broken["error"].eq("NaN loss").all()
    assert np.isnan(df.loc[df["row"] == "cpm", "metrics.sd"]).all()

    out = save_results(df, tmp_path / "out" / "results.parquet")
    back = read_results(str(out), tracking_uri="unused")
    pd.testing.assert_frame_equal(back, df)


def test_histories_are_per_step(study_uri: str) -> None:
    df = load_results(study_uri, "study")
    run_id = df.loc[(df["row"] == "sr3") & (df["seed"] == 1), "run_id"].item()
    hist = load_histories(study_uri, [run_id])
    assert hist["step"].tolist() == list(range(5))
    np.testing.assert_allclose(hist["value"], [1 / (1 + s) + 0.01 for s in range(5)])


def test_unknown_experiment_and_missing_store_are_one_line_errors(
    study_uri: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match="unknown experiment 'nope'.*search, study") as err:
        load_results(study_uri, "nope")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no MLflow store"):
        load_results(f"sqlite:///{tmp_path / 'absent' / 'mlflow.db'}", "study")
    assert not (tmp_path / "absent").exists()


def test_empty_experiment_is_a_one_line_error(study_uri: str) -> None:
    MlflowClient(tracking_uri=study_uri).create_experiment("empty")
    with pytest.raises(UserError, match="'empty' has no trial runs"):
        load_results(study_uri, "empty")
