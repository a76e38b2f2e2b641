"""What a launch will cost, before it runs: the numbers of ``ablate plan`` and ``ablate
run/search --dry-run`` (:mod:`ablate.planning.printing` prints them).

For every trial of a launch (row x seed x grid point, as :func:`ablate.trials.expand` makes
them, or the samples of a search), at the launch's settings:

- parameters and GMACs of one full reconstruction of one image (as ``ablate count`` counts
  them) and the MACs of one training forward pass, counted on the ``meta`` device (no
  arithmetic, no memory);
- FLOPs: training ``2 x (3 x trainable-layer MACs + frozen-layer MACs) x steps`` (the forward
  MACs x 3 x 2 of the issue, with a frozen network such as PMDM's estimator run forward
  only), and evaluation ``2 x reconstruction MACs x images x samples`` (every validation,
  the final validation, and the test set with K AMS samples);
- peak memory: weights, gradients and Adam state of the trainable parameters, frozen
  weights, an EMA copy, and the activations the training forward keeps for the backward
  (leaf-module outputs at the batch size, an upper bound); beside it what
  ``benchmarks/results`` measured when a record of that row exists;
- wall time: training steps / iterations per second and evaluation images x seconds per
  image, *measured* when a record in ``benchmarks/results`` (:mod:`ablate.planning.records`)
  has the same row settings, image size, batch, precision / compile switches and device (it
  says which file), else an *estimate* from FLOPs at an assumed MFU (model FLOPs
  utilisation) that it states. The assumed MFU is the median of what the measured records
  on that device and precision achieve, or, with no such record, a default taken from the
  H100 measurements in docs/architecture.md, "What the planner assumes"
  (:mod:`ablate.planning.devices`);
- a suggested ``--resources gpu=`` fraction: how many such trials fit in the GPU's memory
  (at most :data:`MAX_PACK`);
- launch totals: trials, GPU-hours (each trial alone on a whole device), the dataset's
  build time (from ``benchmarks/results/data-*.json``) and the wall time on N devices
  (longest-first list scheduling of the trials on the launch's slots);
- a ``design:``'s rows (``ablate.designs``), the combinations it dropped and the effects its
  rows cannot separate, and (:func:`compare_designs`) each kind of design's rows, trials and
  GPU-hours side by side;
- (:func:`power_plan`) the seeds and test subjects each contrast needs to detect an effect at
  80% power, from an earlier launch's variance (``ablate.analysis.power``), and their cost.

Nothing here starts Ray, builds a dataset or touches MLflow.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ablate import confounds, designs
from ablate.analysis import power
from ablate.analysis.estimates import ALPHA
from ablate.analysis.factorial import Layout, alias_lines, term_weights
from ablate.analysis.study import contrasts_for
from ablate.config import ExperimentConfig, TrialConfig
from ablate.errors import UserError
from ablate.planning.devices import (
    DEFAULT_MFU,
    DEVICES,
    SAMPLING_MFU_FACTOR,
    Device,
    device_spec,
)
from ablate.planning.records import (
    RESULTS,
    RowRecord,
    data_records,
    find_match,
    load_records,
    on_device,
    record_config,
    sample_steps,
    variant,
    variant_label,
)
from ablate.trials import (
    ANY_TRIAL,
    ROW,
    SEED,
    check_search,
    expand,
    grid_axes,
    search_base,
    trial_config,
    trial_key,
)
from ablate.workspace import Workspace

#: At most this many trials share one GPU in a suggested ``--resources gpu=`` fraction.
MAX_PACK = 4
#: Memory a CUDA context takes besides the tensors (not in ``max_memory_allocated``).
CONTEXT_GB = 0.5
#: Per-trial fixed costs, seconds: a worker starting (imports), the dataset opened, the
#: method built, the MLflow child run created and closed (issue 18's measurement: 3.9-4.2 s of
#: imports per fresh worker, 1.5 s of MLflow), and ``torch.compile``'s warm-up on a GPU
#: (~200 s: docs/architecture.md, "What the planner assumes").
STARTUP_S = 6.0
COMPILE_WARMUP_S = 200.0
#: The simulator's fixed cost (anatomy template, projector) for a preset with no record.
SIM_SETUP_S = 2.0


# --- the dataset ----------------------------------------------------------------------------


@dataclass
class DataPlan:
    source: str  # "preset lowdose-128" or a folder
    image_size: int
    slices: dict[str, int]  # per split
    build_s: float
    build_note: str
    test_subjects: int = 0  # what a contrast's subject-level test counts (power)


def plan_data(exp: ExperimentConfig, results_dir: Path, workdir: Path | None) -> DataPlan:
    """Image size and split sizes of the launch's dataset, and its build time: 0 for a
    folder or a dataset already simulated in ``workdir``'s cache; else the simulator's
    slices/s measured for the preset (``data-*.json``), or a measured preset's rate scaled
    by pixels x angles x OSEM iterations x subsets."""
    from ablate.data.format import SPLITS
    from ablate.data.simulate import resolve_config

    data = exp.data
    if data.path is not None:
        from ablate.data.format import read_manifest

        manifest = read_manifest(Path(data.path))
        slices = {s: int((manifest["split"] == s).sum()) for s in SPLITS}
        size = int(manifest["height"].iloc[0])
        tested = int(manifest.loc[manifest["split"] == "test", "subject"].nunique())
        return DataPlan(str(data.path), size, slices, 0.0, "an existing folder", tested)
    cfg = resolve_config(data.preset, data.overrides)
    slices = {s: n * cfg.slices for s, n in zip(SPLITS, cfg.split, strict=True)}
    source = f"preset {data.preset}" + (f" {data.overrides}" if data.overrides else "")
    if workdir is not None:
        from ablate.data.store import dataset_key

        folder = Workspace.at(workdir).datasets / dataset_key(data)
        if (folder / "provenance.json").is_file():
            done = f"already built: {folder}"
            return DataPlan(source, cfg.image_size, slices, 0.0, done, cfg.split[2])
    total = cfg.subjects * cfg.slices
    records = data_records(results_dir)

    def work(c: Any) -> float:  # simulator cost per slice, relative
        return c.image_size**2 * c.angles * c.iterations

    if data.preset in records and not data.overrides:
        rec = records[data.preset]
        seconds = rec.get("projector_build_s", 0.0) + total / rec["slices_per_s"]
        note = f"measured ({rec['file']}: {rec['slices_per_s']} slices/s on {rec['where']})"
        return DataPlan(source, cfg.image_size, slices, seconds, note, cfg.split[2])
    if records:
        name, rec = next(iter(records.items()))
        ref = resolve_config(name, {})
        rate = rec["slices_per_s"] * work(ref) / work(cfg)
        setup = SIM_SETUP_S + rec.get("projector_build_s", 0.0) * work(cfg) / work(ref)
        note = (
            f"estimate: {rec['file']}'s {name} rate scaled by pixels x angles x iterations "
            f"({rate:.3g} slices/s) + {SIM_SETUP_S:.0f} s set-up"
        )
        return DataPlan(source, cfg.image_size, slices, setup + total / rate, note, cfg.split[2])
    no_record = "no data benchmark record"
    return DataPlan(source, cfg.image_size, slices, float("nan"), no_record, cfg.split[2])


# --- per-configuration counts ------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """What counting one trial's method (at its image size and batch) gives."""

    params_m: float
    trainable_params: int
    frozen_params: int
    infer_gmacs: float  # one full reconstruction of one image
    train_fwd_gmacs: float  # one training forward pass, whole batch
    step_tflop: float  # one training step, forward + backward
    activations_gb: float
    stochastic: bool
    stage1_tflop: float  # PMDM's estimator training (once per seed), 0 if none
    stage1_steps: int


@functools.lru_cache(maxsize=256)
def _profile_cached(trial_json: str, image_size: int) -> Profile:
    import torch

    from ablate.config import TrialConfig
    from ablate.methods.registry import build_method
    from ablate.planning.complexity import count_params, count_training, training_batch

    trial = TrialConfig.model_validate_json(trial_json)
    try:
        method = build_method(trial, image_size)
    except (RuntimeError, NotImplementedError, ValueError) as err:
        raise UserError(f"row '{trial.row_name}' cannot be built for planning: {err}") from None
    unique = {id(p): p for p in method.parameters()}.values()
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    frozen = sum(p.numel() for p in unique if not p.requires_grad)
    estimator = getattr(method, "estimator", None)
    est_training = getattr(method, "estimator_training", None)
    needs_stage1 = estimator is not None and getattr(method, "estimator_checkpoint", 1) is None
    params = count_params(method)
    infer_macs = _reconstruction_macs(trial, method, image_size)  # moves the method to meta
    batch = trial.train.batch_size
    counts = count_training(method, training_batch(method, trial, batch, image_size))
    bf16 = trial.train.precision == "bf16"
    act_bytes = (
        counts.matmul_activations * (2 if bf16 else 4)
        + (counts.activations - counts.matmul_activations) * 4
    )
    stage1_tflop, stage1_steps = 0.0, 0
    if needs_stage1 and est_training is not None:
        per_image = counts.frozen_macs / batch  # the estimator's forward, per image
        stage1_steps = int(est_training.steps)
        stage1_tflop = 6 * per_image * est_training.batch_size * stage1_steps / 1e12
    del torch  # imported for its side effects on the meta device only
    return Profile(
        params_m=params / 1e6,
        trainable_params=trainable,
        frozen_params=frozen,
        infer_gmacs=infer_macs / 1e9,
        train_fwd_gmacs=counts.macs / 1e9,
        step_tflop=counts.step_flops() / 1e12,
        activations_gb=act_bytes / 2**30,
        stochastic=bool(method.stochastic),
        stage1_tflop=stage1_tflop,
        stage1_steps=stage1_steps,
    )


def _with_sample_steps(trial: TrialConfig, steps: int) -> TrialConfig:
    """``trial`` with its row's sampler cut to ``steps`` denoiser calls."""
    if trial.row.method == "sr3":
        diffusion = trial.diffusion.model_copy(
            update={"sr3": trial.diffusion.sr3.model_copy(update={"sample_steps": steps})}
        )
        return trial.model_copy(update={"diffusion": diffusion})
    if trial.row.method == "coarse_to_fine":
        diffusion = trial.diffusion.model_copy(
            update={"irm": trial.diffusion.irm.model_copy(update={"sample_steps": steps})}
        )
        return trial.model_copy(update={"diffusion": diffusion})
    return trial.model_copy(update={"row": trial.row.model_copy(update={"sample_steps": steps})})


def _reconstruction_macs(trial: TrialConfig, method: Any, image_size: int) -> int:
    """MACs of one reconstruction of one image. A sampler's MACs are linear in its steps
    (the same denoiser each step), so a long one is counted at 1 and 2 steps and
    extrapolated: walking 1000 meta-device steps costs seconds, this milliseconds."""
    from ablate.methods.registry import build_method
    from ablate.planning.complexity import count_method

    steps = sample_steps(trial)
    if steps <= 2:
        return count_method(method, image_size)[2]
    method.to("meta")  # as count_method leaves it, for the training count
    one, two = (
        count_method(build_method(_with_sample_steps(trial, n), image_size), image_size)[2]
        for n in (1, 2)
    )
    return one + (two - one) * (steps - 1)


def profile(trial: TrialConfig, image_size: int) -> Profile:
    """:class:`Profile` of ``trial`` (cached by its settings, seed excluded)."""
    key = trial.model_copy(update={"seed": 0, "experiment": ""}).model_dump_json()
    return _profile_cached(key, image_size)


def memory_gb(trial: TrialConfig, prof: Profile) -> float:
    """Peak training memory: fp32 weights + gradients + Adam's two moments (16 bytes per
    trainable parameter), frozen weights (4), an EMA copy (4 per trainable), activations."""
    ema = 4 * prof.trainable_params if trial.train.ema_decay > 0 else 0
    state = 16 * prof.trainable_params + 4 * prof.frozen_params + ema
    return state / 2**30 + prof.activations_gb


# --- speeds -----------------------------------------------------------------------------


@dataclass
class Speed:
    it_per_s: float
    train_source: str
    single_s: float  # one reconstruction of one image, alone
    batched_s: float  # one reconstruction of one image among a batch of them
    ams_s: float | None  # K samples of one image (as one batch)
    eval_source: str
    measured_mem_gb: float | None = None
    mem_source: str | None = None


def _peak_tflops(device: Device, trial: TrialConfig) -> float:
    peak = device.peak_tflops[trial.train.precision]
    return peak * trial.train.num_threads if device.kind == "cpu" else peak


def _cuda_graphs(switches: dict[str, Any]) -> bool:
    return bool(switches["compile"]) and switches["compile_mode"] in (
        "reduce-overhead",
        "max-autotune",
    )


@functools.lru_cache(maxsize=64)
def _calibration(device_name: str, switches_key: tuple, results_dir: str) -> tuple:
    """(training MFU, sampling MFU, batching factor, where from) for estimates on a device
    with these switches: medians over the measured rows of the records, each row counted at
    its own settings. The batching factor is the cost per image of K images sampled as one
    batch over the cost of one image alone (evaluation samples in batches).
    Rows of the same device first, else of any device of the same kind (MFU carries over
    between GPUs better than it/s does); full runs before ``--quick`` ones.
    (None, None, 1.0, "") when no record has these switches."""
    device = DEVICES[device_name]
    want = dict(switches_key)
    label = variant_label(want)
    rows = [r for r in load_records(Path(results_dir)) if r.variant == want and r.config]
    same = [r for r in rows if on_device(r, device)]
    kind = [
        r
        for r in rows
        if (r.device == "cpu") == (device.kind == "cpu")
        and any(on_device(r, d) for d in DEVICES.values())
    ]
    for pool, where in ((same, device.name), (kind, None)):
        for quick in (False, True):
            chosen = [r for r in pool if r.quick == quick]
            if not chosen:
                continue
            train_mfu, sample_mfu, batching = [], [], []
            devices = set()
            for rec in chosen:
                exp = record_config(rec.config) if rec.config else None
                if exp is None or rec.row not in exp.rows:
                    continue
                trial = trial_config(exp, {ROW: rec.row, SEED: exp.seeds[0]})
                train = trial.train.model_copy(update={"batch_size": rec.batch})
                prof = profile(trial.model_copy(update={"train": train}), rec.image_size)
                on = next(d for d in DEVICES.values() if on_device(rec, d))
                peak = on.peak_tflops[want["precision"]]
                if on.kind == "cpu":
                    peak *= rec.threads or 1
                devices.add(on.name)
                train_mfu.append(prof.step_tflop * rec.it_per_s / peak)
                if rec.single_ms:
                    sample_mfu.append(2 * prof.infer_gmacs / 1e3 / (rec.single_ms / 1e3) / peak)
                    if rec.ams_ms and rec.ams_k:
                        batching.append(rec.ams_ms / (rec.single_ms * rec.ams_k))
            if train_mfu:
                files = ", ".join(sorted({r.file for r in chosen}))
                why = (
                    f"median of {len(train_mfu)} measured {label} rows on "
                    f"{where or '/'.join(sorted(devices))} ({files}{', --quick' if quick else ''})"
                )
                return (
                    statistics.median(train_mfu),
                    statistics.median(sample_mfu) if sample_mfu else None,
                    statistics.median(batching) if batching else 1.0,
                    why,
                )
    return None, None, 1.0, ""


def assumed_mfu(
    device: Device, trial: TrialConfig, results_dir: Path, override: float | None
) -> tuple[float, float, str]:
    """(training MFU, sampling MFU, why) for an estimate on ``device``."""
    switches = variant(trial.train)
    label = variant_label(switches)
    if override is not None:
        return override, override * SAMPLING_MFU_FACTOR, "--mfu"
    key = tuple(sorted(switches.items(), key=lambda kv: kv[0]))
    train, sample, _, why = _calibration(device.name, key, str(results_dir))
    if train is not None:
        return train, sample or train * SAMPLING_MFU_FACTOR, why
    default = DEFAULT_MFU[(device.kind, switches["precision"], _cuda_graphs(switches))]
    why = f"no {label} record: the default for {label}, docs/architecture.md (planning defaults)"
    return default, default * SAMPLING_MFU_FACTOR, why


def speed_of(
    trial: TrialConfig,
    image_size: int,
    device: Device,
    records: list[RowRecord],
    results_dir: Path,
    mfu: float | None,
) -> Speed:
    """Training it/s and evaluation seconds per image of ``trial`` on ``device``: measured
    where a record matches (``mfu`` given: never), else estimated at an assumed MFU."""
    prof = profile(trial, image_size)
    k = trial.diffusion.ams_samples
    match = find_match(trial, image_size, device, records, prof.params_m) if mfu is None else None
    rec = match.record if match is not None else None
    measured_eval = match is not None and match.sampling and bool(match.record.single_ms)
    speed = Speed(0.0, "", 0.0, 0.0, None, "")
    key = tuple(sorted(variant(trial.train).items(), key=lambda kv: kv[0]))
    batching = _calibration(device.name, key, str(results_dir))[2] if mfu is None else 1.0
    if match is None or not measured_eval:
        peak = _peak_tflops(device, trial)
        train_mfu, sample_mfu, why = assumed_mfu(device, trial, results_dir, mfu)
        peak_note = f" of {peak:g} TFLOP/s" + (f" ({device.note})" if device.note else "")
        speed.it_per_s = peak * train_mfu / prof.step_tflop
        speed.train_source = f"estimate, assumed MFU {100 * train_mfu:.2g}%{peak_note} ({why})"
        speed.single_s = 2 * prof.infer_gmacs / 1e3 / (peak * sample_mfu)
        speed.eval_source = f"estimate, assumed sampling MFU {100 * sample_mfu:.2g}%{peak_note}"
        if batching != 1.0:
            speed.eval_source += f", batched images at {batching:.2g}x the cost of one alone"
    if match is not None and rec is not None:
        how = "" if match.by == "settings" else ", matched by row name"
        quick = ", --quick" if rec.quick else ""
        speed.it_per_s = rec.it_per_s
        speed.train_source = f"measured ({rec.file}: row {rec.row}{how}{quick})"
        if measured_eval and rec.single_ms:
            speed.single_s = rec.single_ms / 1e3
            if rec.ams_ms and rec.ams_k:
                batching = rec.ams_ms / (rec.single_ms * rec.ams_k)
            speed.eval_source = f"measured ({rec.file})"
    speed.batched_s = speed.single_s * batching
    speed.ams_s = speed.batched_s * k if prof.stochastic else None
    if rec is None:
        return speed
    if rec.peak_mem_mb:
        speed.measured_mem_gb = rec.peak_mem_mb / 1024
        speed.mem_source = rec.file
    return speed


# --- the plan -----------------------------------------------------------------------------


@dataclass
class TrialPlan:
    row: str
    seed: int
    point: dict[str, Any]
    params_m: float
    gmacs: float  # one reconstruction of one image
    train_gmacs: float  # one training forward, whole batch
    steps: int
    batch: int
    train_pflop: float
    eval_pflop: float
    it_per_s: float
    train_source: str
    eval_source: str
    train_s: float
    eval_s: float
    stage1_s: float
    overhead_s: float
    memory_gb: float
    measured_memory_gb: float | None
    memory_source: str | None
    fits: bool
    gpu_fraction: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + self.stage1_s + self.overhead_s

    @property
    def name(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.point.items())
        return f"{self.row}-s{self.seed}{extra}"


@dataclass
class LaunchPlan:
    name: str
    kind: str  # "grid" or "search"
    device: str
    devices: int
    trials: list[TrialPlan]
    data: DataPlan
    resources: dict[str, float]
    max_concurrent: int
    slots: int
    wall_s: float
    suggested_gpu: float | None
    assumptions: list[str]
    search: dict[str, Any] | None = None
    #: What the rows differ in beyond their switches, then the warnings for the contrasts
    #: that confounds (:mod:`ablate.confounds`); empty when the rows compare like for like.
    like_for_like: list[str] = field(default_factory=list)
    #: The design's rows and what it dropped or cannot separate (empty without ``design:``).
    design: list[str] = field(default_factory=list)

    @property
    def trial_s(self) -> float:
        return sum(t.total_s for t in self.trials)

    @property
    def gpu_hours(self) -> float:
        return self.trial_s / 3600

    def estimates(self) -> dict[str, float]:
        """Estimated seconds per trial by :func:`ablate.trials.trial_key` of its point (a
        search's samples share one, under :data:`ablate.trials.ANY_TRIAL`): what trials log
        as ``est_wall_s`` and ``ablate status`` shows beside the actual time."""
        if self.kind == "search":
            return {ANY_TRIAL: self.trials[0].total_s} if self.trials else {}
        return {trial_key({ROW: t.row, SEED: t.seed, **t.point}): t.total_s for t in self.trials}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for entry, trial in zip(out["trials"], self.trials, strict=True):
            entry["total_s"] = trial.total_s
        out.update(trial_s=self.trial_s, gpu_hours=self.gpu_hours)
        return _finite(out)


def _finite(value: Any) -> Any:
    """``value`` with NaN / inf floats as None (valid JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _eval_counts(trial: TrialConfig, slices: dict[str, int]) -> tuple[int, int, int]:
    """(validations, images per validation, test images)."""
    train = trial.train
    n = train.eval_slices
    return train.validations, min(n, slices.get("val", n)), min(n, slices.get("test", n))


def plan_trial(
    trial: TrialConfig,
    point: dict[str, Any],
    data: DataPlan,
    device: Device,
    records: list[RowRecord],
    results_dir: Path,
    mfu: float | None,
    stage1_done: set[tuple[Any, ...]],
) -> TrialPlan:
    size = data.image_size
    prof = profile(trial, size)
    speed = speed_of(trial, size, device, records, results_dir, mfu)
    train = trial.train
    n_val, val_images, test_images = _eval_counts(trial, data.slices)
    k = trial.diffusion.ams_samples if prof.stochastic else 1
    eval_s = n_val * val_images * speed.batched_s + test_images * (
        speed.ams_s if prof.stochastic and speed.ams_s else speed.batched_s
    )
    eval_images = n_val * val_images + test_images * k
    notes = []
    stage1_s = 0.0
    if prof.stage1_tflop:
        key = (trial.seed, prof.stage1_steps, trial.model.deeppet.width, train.batch_size)
        if key not in stage1_done:
            stage1_done.add(key)
            train_mfu, _, _ = assumed_mfu(device, trial, results_dir, mfu)
            stage1_s = prof.stage1_tflop / (_peak_tflops(device, trial) * train_mfu)
            notes.append(
                f"trains the stage-1 estimator ({prof.stage1_steps:,} steps, estimate), "
                "shared by this seed's other estimator rows"
            )
    overhead = STARTUP_S
    if train.compile and device.kind == "gpu":
        overhead += COMPILE_WARMUP_S
        notes.append(f"+{COMPILE_WARMUP_S:.0f} s torch.compile warm-up")
    mem = memory_gb(trial, prof)
    peak_mem = speed.measured_mem_gb or mem
    fits = peak_mem + (CONTEXT_GB if device.kind == "gpu" else 0) <= device.memory_gb
    fraction = None
    if device.kind == "gpu":
        n = max(1, min(MAX_PACK, int(0.9 * device.memory_gb // (peak_mem + CONTEXT_GB))))
        n = 1 << (n.bit_length() - 1)  # 1, 2 or 4: fractions that tile a GPU
        fraction = 1.0 / n
    if not fits:
        notes.append(f"needs ~{peak_mem:.1f} GB: does not fit a {device.name}")
    return TrialPlan(
        row=trial.row_name,
        seed=trial.seed,
        point=point,
        params_m=prof.params_m,
        gmacs=prof.infer_gmacs,
        train_gmacs=prof.train_fwd_gmacs,
        steps=train.steps,
        batch=train.batch_size,
        train_pflop=prof.step_tflop * train.steps / 1e3,
        eval_pflop=2 * prof.infer_gmacs * eval_images / 1e6,
        it_per_s=speed.it_per_s,
        train_source=speed.train_source,
        eval_source=speed.eval_source,
        train_s=train.steps / speed.it_per_s,
        eval_s=eval_s,
        stage1_s=stage1_s,
        overhead_s=overhead,
        memory_gb=mem,
        measured_memory_gb=speed.measured_mem_gb,
        memory_source=speed.mem_source,
        fits=fits,
        gpu_fraction=fraction,
        notes=notes,
    )


def _schedule(durations: list[float], slots: int) -> float:
    """Makespan of longest-first list scheduling on ``slots`` identical slots."""
    if not durations:
        return 0.0
    loads = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        i = loads.index(min(loads))
        loads[i] += d
    return max(loads)


def _slots(exp: ExperimentConfig, device: Device, devices: int) -> tuple[int, float, str]:
    """(concurrent trials, slowdown of a packed trial, how)."""
    res = exp.resources
    if device.kind == "gpu" and res.gpu > 0:
        per = max(1, int(1 / res.gpu)) if res.gpu <= 1 else 1
        total = per * devices if res.gpu <= 1 else max(1, devices // math.ceil(res.gpu))
        how = f"{devices} GPU(s) x {per} trial(s) each (resources.gpu={res.gpu:g})"
        slowdown = float(per)  # packed trials share one GPU's throughput (no gain assumed)
    else:
        per_cpu = max(1, int(devices // res.cpu)) if res.cpu <= devices else 1
        total, slowdown = per_cpu, 1.0
        how = f"{devices} CPU(s) / resources.cpu={res.cpu:g}"
    if res.max_concurrent:
        total = min(total, res.max_concurrent)
        how += f", max_concurrent={res.max_concurrent}"
    return total, slowdown, how


def _assumptions(device: Device, exp: ExperimentConfig, slowdown: float, how: str) -> list[str]:
    packed = "; packed trials share a GPU's throughput (no packing gain measured)"
    notes = [
        f"per trial: {STARTUP_S:.0f} s of start-up (worker, data, MLflow run)"
        + (f", {COMPILE_WARMUP_S:.0f} s compile warm-up" if exp.train.compile else ""),
        "GPU-hours: each trial alone on a whole device" if device.kind == "gpu" else "",
        f"wall time: {how}, longest trials first" + (packed if slowdown > 1 else ""),
        "memory: fp32 weights + grads + Adam (16 B/param) + activations kept for the backward "
        "(upper bound); the CUDA context (~0.5 GB) is extra",
    ]
    if device.kind == "gpu" and exp.resources.gpu == 0:
        notes.append(
            f"resources.gpu is 0: these trials get no GPU; plan with --gpu cpu or launch "
            f"with --resources gpu=... to run on a {device.name}"
        )
    if device.kind == "cpu" and exp.resources.gpu > 0:
        notes.append("resources.gpu > 0 but planned on a CPU (--gpu cpu)")
    return [n for n in notes if n]


def plan_launch(
    exp: ExperimentConfig,
    *,
    gpu: str | None = None,
    devices: int | None = None,
    search: bool = False,
    mfu: float | None = None,
    results_dir: Path = RESULTS,
    workdir: Path | None = None,
) -> LaunchPlan:
    """The plan of launching ``exp`` as a grid (default) or as its search (``search``)."""
    if mfu is not None and not 0 < mfu <= 1:
        raise UserError(f"--mfu {mfu}: a fraction in (0, 1], e.g. 0.05")
    device = device_spec(gpu or ("H100" if exp.resources.gpu > 0 else "cpu"))
    if devices is None:
        devices = 1 if device.kind == "gpu" else (os.cpu_count() or 1)
    if devices < 1:
        raise UserError("--gpus must be at least 1")
    records = load_records(results_dir)
    data = plan_data(exp, results_dir, workdir)
    stage1: set[tuple[Any, ...]] = set()
    search_info = None
    if search:
        base = check_search(exp)
        assert exp.search is not None
        fixed = search_base(exp)
        sample = plan_trial(base, {}, data, device, records, results_dir, mfu, stage1)
        trials = [sample] + [
            plan_trial(base, {}, data, device, records, results_dir, mfu, set())
            for _ in range(exp.search.num_samples - 1)
        ]
        for t in trials[1:]:
            t.stage1_s = 0.0  # one estimator per seed: the search has one seed
        search_info = _asha(exp, base)
        search_info["row"], search_info["seed"] = fixed[ROW], fixed[SEED]
        kind = "search"
    else:
        points = _points(exp)
        trials = [
            plan_trial(trial, point, data, device, records, results_dir, mfu, stage1)
            for trial, point in zip(expand(exp), points, strict=True)
        ]
        kind = "grid"
    slots, slowdown, how = _slots(exp, device, devices)
    durations = [t.total_s * slowdown for t in trials]
    if search_info is not None:
        durations = [d * search_info["expected_fraction"] for d in durations]
    wall = data.build_s + _schedule(durations, slots) if math.isfinite(data.build_s) else math.nan
    fractions = [t.gpu_fraction for t in trials if t.gpu_fraction is not None]
    return LaunchPlan(
        name=exp.name,
        kind=kind,
        device=device.name,
        devices=devices,
        trials=trials,
        data=data,
        resources={"cpu": exp.resources.cpu, "gpu": exp.resources.gpu},
        max_concurrent=exp.resources.max_concurrent,
        slots=slots,
        wall_s=wall,
        suggested_gpu=max(fractions) if fractions else None,
        assumptions=_assumptions(device, exp, slowdown, how),
        search=search_info,
        like_for_like=[] if search else confounds.of_experiment(exp).lines(),
        design=[] if search else design_lines(exp),
    )


def _points(exp: ExperimentConfig) -> list[dict[str, Any]]:
    """Each grid trial's extra axes (besides row and seed), in :func:`expand`'s order."""
    import itertools

    axes = grid_axes(exp)
    extra = [k for k in axes if k not in (ROW, SEED)]
    return [
        {k: v for k, v in zip(axes, values, strict=True) if k in extra}
        for values in itertools.product(*axes.values())
    ]


def _asha(exp: ExperimentConfig, base: TrialConfig) -> dict[str, Any]:
    """ASHA's rungs for a search and the expected fraction of each trial's training that
    runs: a trial reaches validation m with probability reduction_factor^-(rungs below m)."""
    assert exp.search is not None
    s, train = exp.search, base.train
    n_reports = train.validations
    rungs, r = [], min(s.grace_period, n_reports)
    while r < n_reports:
        rungs.append(r)
        r *= s.reduction_factor
    reach = [s.reduction_factor ** -sum(1 for g in rungs if g < m) for m in range(1, n_reports + 1)]
    return {
        "samples": s.num_samples,
        "validations": n_reports,
        "rungs": rungs,
        "expected_fraction": sum(reach) / n_reports,
    }


# --- designs ------------------------------------------------------------------------------


def _design(exp: ExperimentConfig) -> designs.Design | None:
    """``exp``'s design, regenerated from its rows (None without one, or when ``--rows``
    left its full row out)."""
    if exp.design is None or exp.design.full not in exp.rows:
        return None
    try:
        return designs.generate(exp.design, exp.rows)
    except designs.DesignError as err:  # the command line changed the full row
        raise UserError(f"command line: {err}") from None


def design_lines(exp: ExperimentConfig) -> list[str]:
    """What the plan says about ``exp``'s design: its rows, what it dropped and, for a
    factorial or fractional one, the terms its rows cannot separate."""
    design = _design(exp)
    if design is None:
        return []
    lines = design.lines(launched=set(exp.rows))
    if design.kind in ("factorial", "fractional"):
        layout = Layout(design.factors, design.levels(), design.kind)
        lines += [f"  not separable: {line}" for line in alias_lines(layout, design.rows)]
    return lines


@dataclass(frozen=True)
class DesignCost:
    """One kind of design for the same full row and factors: its rows and the launch's cost
    (every row of the launch, the design's and the YAML's others, x seeds)."""

    kind: str
    rows: int
    trials: int
    hours: float
    unit: str
    note: str = ""


def compare_designs(
    load: Callable[[dict[str, Any]], ExperimentConfig],
    current: designs.Spec,
    **plan_options: Any,
) -> list[DesignCost]:
    """Each kind of design (:data:`ablate.designs.KINDS`) of ``current``'s factors, planned as
    the launch would be (``plan_options``: :func:`plan_launch`'s): ``load`` returns the
    experiment with its ``design:`` keys replaced. A fraction is planned at ``current``'s
    resolution, else at :data:`ablate.designs.DEFAULT_RESOLUTION`."""
    out = []
    for kind in designs.KINDS:
        keys: dict[str, Any] = {"kind": kind, "resolution": None}
        if kind == "fractional":
            keys["resolution"] = current.resolution or designs.DEFAULT_RESOLUTION
        try:
            exp = load(keys)
        except UserError as err:
            out.append(DesignCost(kind, 0, 0, math.nan, "", f"not possible: {err}"))
            continue
        assert exp.design is not None
        design = designs.generate(exp.design, exp.rows)
        plan = plan_launch(exp, **plan_options)
        notes = ["the YAML's design" if kind == current.kind else ""]
        if design.resolution:
            notes.append(f"resolution {designs.ROMAN[design.resolution]}")
        if design.dropped:
            notes.append(f"{len(design.dropped)} combination(s) dropped")
        unit = "GPU-hours" if plan.device != "cpu" else "CPU trial-hours"
        note = "; ".join(n for n in notes if n)
        rows, trials = len(design.points), len(plan.trials)
        out.append(DesignCost(kind, rows, trials, plan.gpu_hours, unit, note))
    return out


# --- power before launch ------------------------------------------------------------------


@dataclass
class PowerPlan:
    """Per contrast of the launch's table (and per effect of its factorial design): what it
    needs to detect ``effect`` at 80% power, and a launch at that many seeds' cost."""

    metric: str
    effect: float
    source: str
    needs: list[power.Need]
    subjects: int
    seeds: int
    trials_per_seed: float
    hours_per_seed: float
    unit: str
    alpha: float


def _planned_contrasts(exp: ExperimentConfig) -> dict[str, dict[str, float]]:
    """The table's contrasts (``analysis.contrasts``) and a factorial or fractional design's
    effects, each as row weights."""
    rows = list(exp.rows)
    out = {
        c.name: dict(c.weights)
        for c in contrasts_for(rows, exp.analysis.contrasts, exp.reference_row)
        if set(c.weights) <= set(rows)
    }
    design = _design(exp)
    if design is not None and design.kind in ("factorial", "fractional"):
        layout = Layout(design.factors, design.levels(), design.kind)
        weights = term_weights(layout, [r for r in design.rows if r in exp.rows])
        out.update({f"effect of {t}": w for t, w in weights.items()})
    return out


def power_plan(
    exp: ExperimentConfig,
    pilot: Any,
    source: str,
    effect: float,
    metric: str = "psnr",
    **plan_options: Any,
) -> PowerPlan:
    """Seeds and test subjects per contrast of ``exp`` for ``effect`` (in ``metric``'s units)
    at 80% power, from the variance of ``pilot`` (a tidy frame), at Holm's strictest level
    (``0.05 / contrasts``); the cost of a launch of ``exp`` at that many seeds."""
    if not effect > 0:
        raise UserError(f"--effect {effect}: the effect to detect, > 0 (e.g. 0.3 dB of PSNR)")
    if metric not in pilot or not pilot[metric].notna().any():
        raise UserError(f"the pilot ({source}) has no '{metric}': pick another --metric")
    plan = plan_launch(exp, **plan_options)
    contrasts = _planned_contrasts(exp)
    if not contrasts:
        raise UserError(
            f"no contrast among the launched rows ({', '.join(exp.rows)}) to plan for: add the "
            f"reference row '{exp.reference_row}' to --rows, or name analysis.contrasts"
        )
    alpha = ALPHA / len(contrasts)
    row = power.per_row(pilot, metric)
    subjects = plan.data.test_subjects
    needs = []
    for name, weights in contrasts.items():
        comps = power.components(pilot, weights, metric, row)
        if comps is None:
            raise UserError(f"the pilot ({source}) has no 2 paired seeds of any 2 rows")
        needs.append(power.need(name, effect, comps, subjects, alpha))
    n = len(exp.seeds)
    return PowerPlan(
        metric, effect, source, needs, subjects, n, len(plan.trials) / n, plan.gpu_hours / n,
        "GPU-hours" if plan.device != "cpu" else "CPU trial-hours", alpha,
    )  # fmt: skip
