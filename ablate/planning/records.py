"""What was measured: the benchmark records of ``benchmarks/results`` (training throughput,
sampling time, peak memory, dataset build rates), how they name a trial's speed switches, and
which record, if any, measured a given trial on a given device."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablate.config import ExperimentConfig, TrialConfig, load_experiment
from ablate.errors import UserError
from ablate.planning.devices import Device
from ablate.shipped import benchmark_records_dir, search_spaces_dir
from ablate.trials import ROW, SEED, trial_config

RESULTS = benchmark_records_dir()
SEARCH_SPACES = search_spaces_dir()


# --- what a trial's switches are called, and how records describe theirs ------------------

_SWITCHES = ("precision", "channels_last", "fused_adam", "compile", "compile_mode")


def variant(train: Any) -> dict[str, Any]:
    """The speed-relevant training switches of a trial (``compile_mode`` only with compile)."""
    out = {key: getattr(train, key) for key in _SWITCHES}
    if not out["compile"]:
        out["compile_mode"] = None
    return out


def variant_label(switches: dict[str, Any]) -> str:
    parts = [switches["precision"]]
    parts += [key for key in ("channels_last", "fused_adam") if switches[key]]
    if switches["compile"]:
        parts.append(f"compile({switches['compile_mode']})")
    return "+".join(parts) if len(parts) > 1 else f"{parts[0]} eager"


_PLAIN = {
    "precision": "fp32",
    "channels_last": False,
    "fused_adam": False,
    "compile": False,
    "compile_mode": None,
}


# --- benchmark records --------------------------------------------------------------------


@dataclass(frozen=True)
class RowRecord:
    """One row of a benchmark record: what one configuration measured on one device."""

    file: str
    device: str
    switches: tuple[tuple[str, Any], ...]
    config: str | None  # the search-space YAML the benchmark built its rows from
    image_size: int
    batch: int
    threads: int | None
    quick: bool
    row: str
    params_m: float | None
    it_per_s: float
    single_ms: float | None
    ams_ms: float | None
    ams_k: int | None
    peak_mem_mb: float | None

    @property
    def variant(self) -> dict[str, Any]:
        return dict(self.switches)


def _config_of(stem: str, prefix: str, device_part: bool) -> str:
    """``throughput-cuda`` -> ``paper_table2.yaml``; ``throughput-pmdm_table1-cuda`` ->
    ``pmdm_table1.yaml`` (the benchmarks' naming rule)."""
    rest = stem.removeprefix(prefix)
    if device_part:
        rest = rest.rpartition("-")[0] if "-" in rest else ""
    return f"{rest}.yaml" if rest else "paper_table2.yaml"


def _throughput_rows(path: Path, data: dict[str, Any]) -> list[RowRecord]:
    if data.get("dtype", "float32") != "float32":
        return []
    config = _config_of(path.stem, "throughput-", device_part=True)
    return [
        RowRecord(
            file=path.name,
            device=str(data.get("device", "")),
            switches=tuple(_PLAIN.items()),
            config=config,
            image_size=int(data["image_size"]),
            batch=int(r.get("batch", 4)),
            threads=data.get("threads"),
            quick=bool(data.get("quick", False)),
            row=str(r["row"]),
            params_m=r.get("params_m"),
            it_per_s=float(r["train_it_per_s"]),
            single_ms=r.get("sample_ms_per_image"),
            ams_ms=r.get("ams_ms"),
            ams_k=r.get("ams_k"),
            peak_mem_mb=r.get("peak_mem_mb"),
        )
        for r in data.get("rows", [])
        if r.get("train_it_per_s")
    ]


def _gpu_rows(path: Path, data: dict[str, Any]) -> list[RowRecord]:
    """``benchmarks/gpu.py`` records: one entry per row and variant, at batch 4."""
    out = []
    for name, switches in (data.get("variants") or {}).items():
        full = {**_PLAIN, **switches}
        if full["compile"]:
            full["compile_mode"] = data.get("compile_mode", "default")
        for r in data.get("rows", []):
            its = (r.get("it_per_s_b4") or {}).get(name)
            if not its:
                continue
            sampling = (r.get("sampling") or {}).get(name) or {}
            out.append(
                RowRecord(
                    file=path.name,
                    device=str(data.get("device", "")),
                    switches=tuple(full.items()),
                    config=data.get("config"),
                    image_size=int(data["image_size"]),
                    batch=4,
                    threads=None,
                    quick=bool(data.get("quick", False)),
                    row=str(r["row"]),
                    params_m=None,
                    it_per_s=float(its),
                    single_ms=sampling.get("single_ms"),
                    ams_ms=sampling.get("ams_ms"),
                    ams_k=r.get("ams_k"),
                    peak_mem_mb=None,  # measured at the saturating batch, not at batch 4
                )
            )
    return out


def load_records(results_dir: Path = RESULTS) -> list[RowRecord]:
    """Every training-throughput row of ``benchmarks/results/*.json`` (``throughput-*`` and
    ``gpu-*`` records; others are skipped)."""
    records: list[RowRecord] = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or "rows" not in data:
            continue
        try:
            if path.stem.startswith("throughput"):
                records += _throughput_rows(path, data)
            elif path.stem.startswith("gpu-"):
                records += _gpu_rows(path, data)
        except (KeyError, TypeError, ValueError):
            continue  # a record of another shape: not ours to read
    return records


def on_device(record: RowRecord, device: Device) -> bool:
    """Whether ``record`` was measured on ``device`` (a GPU: by one of its aliases)."""
    if device.kind == "cpu":
        return record.device == "cpu"
    return any(alias.lower() in record.device.lower() for alias in device.aliases)


# --- dataset builds -----------------------------------------------------------------------


def data_records(results_dir: Path) -> dict[str, dict[str, Any]]:
    """The simulator's measured rate per preset (``data-*.json``): the first record of each
    preset, with its file and where it ran."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(results_dir).glob("data-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for entry in data.get("presets", []):
            if entry.get("slices_per_s"):
                where = f"{data.get('device', '?')}, {data.get('cpu_threads', '?')} thread(s)"
                out.setdefault(entry["preset"], {**entry, "file": path.name, "where": where})
    return out


# --- matching a trial to a measurement ----------------------------------------------------


@functools.lru_cache(maxsize=32)
def record_config(name: str) -> ExperimentConfig | None:
    """The search space a benchmark built its rows from (``search_spaces/NAME``), or None
    when it is not there or no longer loads."""
    path = SEARCH_SPACES / name
    if not path.is_file():
        return None
    try:
        return load_experiment(path)
    except UserError:
        return None


_FAMILY = {
    "sr3": ("sr3",),
    "coarse_to_fine": ("coarse_to_fine",),
    "deeppet": ("deeppet",),
    "pmdm": ("pmdm", "deeppet"),
    "palette": ("pmdm",),
    "cgan": ("gan",),
    "pix2pix": ("gan",),
    "vqvae": ("vqvae",),
}
_NOT_SPEED = {"label", "lr", "weight_decay", "estimator_checkpoint"}


def _settings(trial: TrialConfig) -> dict[str, Any]:
    """What sets a training step's cost: the row's switches and its family's networks."""
    model = trial.model.model_dump(mode="json")
    return {
        "row": trial.row.model_dump(mode="json", exclude=_NOT_SPEED),
        "model": {k: model[k] for k in _FAMILY.get(trial.row.method, ())},
        "negatives": trial.loss.negatives if getattr(trial.row, "contrastive", False) else None,
    }


def sample_steps(trial: TrialConfig) -> int:
    """Denoiser calls per reconstruction (0 for a deterministic row)."""
    row, diff = trial.row, trial.diffusion
    if row.method == "sr3":
        return diff.sr3.sample_steps
    if row.method == "coarse_to_fine":
        return diff.irm.sample_steps if getattr(row, "irm", False) else 0
    if row.method in ("pmdm", "palette"):
        return getattr(row, "sample_steps", None) or diff.pmdm.train_steps
    return 0


@dataclass(frozen=True)
class Match:
    record: RowRecord
    by: str  # "settings" or "row name"
    sampling: bool  # the record's sampler matches (same steps)


def find_match(
    trial: TrialConfig,
    image_size: int,
    device: Device,
    records: list[RowRecord],
    params_m: float,
) -> Match | None:
    """The measurement of this trial's training step on ``device``: a record row with the
    same row switches and networks (read from the benchmark's own search-space file), image
    size, batch, precision/compile switches (and, on a CPU, threads); full runs before
    ``--quick`` ones. Without the benchmark's config file, the row name must match. A record
    that counted its parameters must count ``params_m`` (the trial's, in millions)."""
    want = variant(trial.train)
    mine = _settings(trial)
    found: list[Match] = []
    for rec in records:
        if not on_device(rec, device) or rec.variant != want:
            continue
        if rec.image_size != image_size or rec.batch != trial.train.batch_size:
            continue
        if device.kind == "cpu" and rec.threads != trial.train.num_threads:
            continue
        exp = record_config(rec.config) if rec.config else None
        if exp is not None and rec.row in exp.rows:
            theirs = trial_config(exp, {ROW: rec.row, SEED: exp.seeds[0]})
            if _settings(theirs) != mine:
                continue
            by, same_sampler = "settings", sample_steps(theirs) == sample_steps(trial)
        elif rec.row == trial.row_name:
            by, same_sampler = "row name", True
        else:
            continue
        if rec.params_m is not None:
            if abs(params_m - rec.params_m) > 1e-4 * max(rec.params_m, 1e-9):
                continue
        found.append(Match(rec, by, same_sampler))
    found.sort(key=lambda m: (m.record.quick, m.by != "settings"))
    return found[0] if found else None
