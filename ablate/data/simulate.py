"""The offline brain PET simulator: phantoms -> sinograms -> Poisson counts -> OSEM.

One subject at a time, all of its slices batched through the projector:

1. a phantom (``phantoms.make_phantom``): FDG activity (GM : WM : CSF ~ 4 : 1 : 0, a little
   scalp background, lesions) and an attenuation map (tissue and skull);
2. expected counts ``ybar = c * att * A(PSF(x))`` with the per-subject calibration ``c`` set so
   that the mean slice has ``counts_per_slice`` expected counts;
3. full-dose counts ``y ~ Poisson(ybar)``; low-dose counts by binomial thinning of ``y`` with
   probability ``1 / dose_reduction`` (a low-dose scan is a subsample of the full one, and it
   is exactly ``Poisson(ybar / dose_reduction)``);
4. the same OSEM (+ optional post-filter) for both doses, modelling attenuation and PSF.

Dataset keys: ``lpet`` = low-dose reconstruction, ``spet`` = full-dose reconstruction (for
the sinogram preset this is the OSEM 10x14 high-count reference, as paper 000 uses),
``sinogram`` = the full-dose measured counts (``[angles, bins]``), ``activity`` = the true
activity map. Every knob of :class:`SimConfig` can be overridden per preset.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ablate.data.format import (
    NORMALISATION,
    SubjectArrays,
    full_dose_scale,
    package_version,
    write_dataset,
)
from ablate.data.phantoms import TEMPLATE_ATTRIBUTION, PhantomSpec, make_phantom, subject_generator
from ablate.data.projector import GaussianPSF, ParallelBeamProjector
from ablate.data.recon import gaussian_filter, osem
from ablate.device import resolve_device
from ablate.errors import UserError

Output = Literal["lpet", "spet", "sinogram", "activity"]


class SimConfig(BaseModel):
    """Every knob of the simulator. Presets are partial overrides of these defaults."""

    model_config = ConfigDict(extra="forbid")

    subjects: int = Field(default=20, ge=3)
    split: tuple[int, int, int] = Field(default=(14, 2, 4), description="train/val/test subjects")
    image_size: int = Field(default=128, ge=8)
    pixel_mm: float = Field(default=2.0, gt=0)
    slices: int = Field(default=64, ge=1)
    slice_mm: float = Field(default=2.0, gt=0)
    z_centre_mm: float = 15.0
    template_mm: int = Field(default=1, ge=1, le=4)
    rotation_deg: float = Field(default=8.0, ge=0)
    scale_frac: float = Field(default=0.08, ge=0, lt=0.5)
    shift_mm: float = Field(default=5.0, ge=0)
    elastic_mm: float = Field(default=3.0, ge=0)
    gm_uptake: float = Field(default=4.0, ge=0)
    wm_uptake: float = Field(default=1.0, ge=0)
    background_uptake: float = Field(default=0.1, ge=0)
    uptake_jitter: float = Field(default=0.1, ge=0)
    regional_jitter: float = Field(default=0.15, ge=0)
    lesions_max: int = Field(default=3, ge=0)
    lesion_radius_mm: tuple[float, float] = (3.0, 8.0)
    hot_fraction: float = Field(default=0.7, ge=0, le=1)
    attenuation: bool = True
    mu_tissue: float = Field(default=0.0096, ge=0, description="1/mm, water at 511 keV")
    mu_bone: float = Field(default=0.0151, ge=0, description="1/mm, cortical bone at 511 keV")
    skull_mm: float = Field(default=6.0, ge=0)
    scalp_mm: float = Field(default=5.0, ge=0)
    psf_fwhm_mm: float = Field(default=4.0, ge=0)
    angles: int = Field(default=180, ge=2)
    bins: int | None = Field(default=None, description="None: enough to cover the image")
    bin_mm: float | None = Field(default=None, description="None: the pixel size")
    counts_per_slice: float = Field(default=2e6, gt=0, description="mean expected full-dose")
    dose_reduction: float = Field(default=100.0, ge=1)
    iterations: int = Field(default=4, ge=1)
    subsets: int = Field(default=6, ge=1)
    postfilter_fwhm_mm: float = Field(default=4.0, ge=0)
    outputs: tuple[Output, ...] = ("lpet", "spet")
    crop_bins: int | None = Field(default=None, description="stored sinogram: central bins")
    pad_angles: int | None = Field(default=None, description="stored sinogram: zero-pad angles")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(
        default=0,
        ge=0,
        description="torch CPU threads while simulating; 0 keeps the current setting. Small "
        "slices are fastest on 1 thread, and extra threads collapse when cores are shared.",
    )

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if sum(self.split) != self.subjects:
            raise ValueError(f"split {self.split} must add up to subjects={self.subjects}")
        if min(self.split) < 1:
            raise ValueError(f"split {self.split}: every split needs at least one subject")
        if self.angles % self.subsets:
            raise ValueError(f"angles={self.angles} is not divisible by subsets={self.subsets}")
        if "lpet" in self.outputs and "spet" not in self.outputs:
            raise ValueError("'lpet' needs 'spet' in outputs (it is normalised by it)")
        return self

    @property
    def n_bins(self) -> int:
        return (
            self.bins
            or int(np.ceil(self.image_size * np.sqrt(2) * self.pixel_mm / self.bin_size)) + 2
        )

    @property
    def bin_size(self) -> float:
        return self.bin_mm or self.pixel_mm


PRESETS: dict[str, dict[str, Any]] = {
    # A few small subjects in seconds: `ablate demo` and the tests.
    "tiny": {
        "subjects": 7,
        "split": (4, 1, 2),
        "image_size": 32,
        "pixel_mm": 7.0,
        "slices": 14,
        "slice_mm": 7.0,
        "template_mm": 4,
        "angles": 48,
        "subsets": 4,
        "iterations": 5,
        "psf_fwhm_mm": 0.0,
        "postfilter_fwhm_mm": 7.0,
        "counts_per_slice": 3e6,
        "threads": 1,
        "lesions_max": 1,
        "outputs": ("lpet", "spet", "sinogram", "activity"),
    },
    # Paper 003 shape: 128x128 LPET/SPET pairs at dose reduction 100.
    "lowdose-128": {},
    # Paper 000 shape: mMR-like geometry, 1e10 counts over 55 slices, OSEM 10x14 reference.
    "sinogram-256": {
        "split": (17, 1, 2),
        "image_size": 256,
        "pixel_mm": 2.086,
        "slices": 55,
        "slice_mm": 2.031,
        "angles": 252,
        "bins": 344,
        "bin_mm": 2.086,
        "psf_fwhm_mm": 2.5,
        "counts_per_slice": 1e10 / 55,
        "iterations": 10,
        "subsets": 14,
        "postfilter_fwhm_mm": 0.0,
        "outputs": ("spet", "sinogram", "activity"),
        "crop_bins": 256,
        "pad_angles": 256,
    },
}


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (values in YAML syntax) -> a dict of overrides."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected key=value (e.g. --set subjects=10)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def resolve_config(preset: str, overrides: dict[str, Any] | None = None) -> SimConfig:
    """A preset with overrides applied, validated; any problem is one-line :class:`UserError`."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}': choose one of {', '.join(PRESETS)}")
    raw = {**PRESETS[preset], **(overrides or {})}
    if "subjects" in (overrides or {}) and "split" not in (overrides or {}):
        raw["split"] = default_split(int(raw["subjects"]))
    try:
        return SimConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(config)"
        if first["type"] == "extra_forbidden":
            knobs = ", ".join(SimConfig.model_fields)
            raise UserError(f"unknown simulator knob '{where}': knobs are {knobs}") from None
        raise UserError(f"simulator knob '{where}': {first['msg']}") from None


def default_split(subjects: int) -> tuple[int, int, int]:
    """About 70/10/20 by subject, at least one subject per split."""
    val = max(1, round(0.1 * subjects))
    test = max(1, round(0.2 * subjects))
    return (subjects - val - test, val, test)


def _phantom_spec(cfg: SimConfig) -> PhantomSpec:
    names = {f.name for f in dataclasses.fields(PhantomSpec)}
    return PhantomSpec(**{k: v for k, v in cfg.model_dump().items() if k in names})


class Scanner:
    """The projector, PSF and settings shared by every subject of one dataset."""

    def __init__(self, cfg: SimConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.projector = ParallelBeamProjector(
            cfg.image_size, cfg.pixel_mm, cfg.angles, cfg.n_bins, cfg.bin_size, cfg.subsets, device
        )
        self.psf = GaussianPSF(cfg.image_size, cfg.pixel_mm, cfg.psf_fwhm_mm, device)

    def simulate_subject(self, seed: int, k: int) -> dict[str, Any]:
        """Arrays of subject ``k`` in physical units (activity units, counts) + metadata."""
        cfg, proj = self.cfg, self.projector
        phantom = make_phantom(_phantom_spec(cfg), seed, k, self.device)
        x = phantom.activity * proj.fov_mask
        att = torch.ones((x.shape[0], *proj.sinogram_shape), device=self.device)
        if cfg.attenuation:
            att = torch.exp(-proj.forward(phantom.mu))
        blurred = self.psf(x)
        ideal = att * proj.forward(blurred)
        total = ideal.sum()
        calib = float(cfg.counts_per_slice * x.shape[0] / total) if total > 0 else 1.0
        rate = (calib * ideal).clamp_min(0)
        g = subject_generator(seed, k, 1, self.device)
        counts_full = torch.poisson(rate, generator=g)
        out: dict[str, Any] = {
            "activity": x,
            "expected_counts": rate.sum((1, 2)),
            "counts": counts_full.sum((1, 2)),
            "calibration": calib,
            "lesions": phantom.lesions,
            "lesion_labels": phantom.lesion_labels,
        }
        doses = {"spet": (counts_full, calib)}
        if "lpet" in cfg.outputs:
            keep = torch.full_like(counts_full, 1.0 / cfg.dose_reduction)
            thinned = torch.binomial(counts_full, keep, generator=g)
            doses["lpet"] = (thinned, calib / cfg.dose_reduction)
        for key, (counts, dose_calib) in doses.items():
            if key not in cfg.outputs:
                continue
            img = osem(counts / dose_calib, proj, cfg.iterations, att, self.psf)
            out[key] = gaussian_filter(img, cfg.pixel_mm, cfg.postfilter_fwhm_mm)
        out["sinogram"] = counts_full
        return out


def _store_sinogram(sino: np.ndarray, cfg: SimConfig) -> np.ndarray:
    """Crop radial bins to the centre and zero-pad angles, as paper 000 stores 256x256 pairs."""
    if cfg.crop_bins is not None and cfg.crop_bins < sino.shape[2]:
        start = (sino.shape[2] - cfg.crop_bins) // 2
        sino = sino[:, :, start : start + cfg.crop_bins]
    if cfg.pad_angles is not None and cfg.pad_angles > sino.shape[1]:
        pad = cfg.pad_angles - sino.shape[1]
        sino = np.pad(sino, ((0, 0), (0, pad), (0, 0)))
    return sino


def simulate_dataset(
    preset: str,
    seed: int,
    overrides: dict[str, Any] | None,
    dest: Path,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Simulate a whole dataset into ``dest`` (written atomically) and return ``dest``."""
    cfg = resolve_config(preset, overrides)
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _simulate(cfg, preset, seed, overrides, dest, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _simulate(
    cfg: SimConfig,
    preset: str,
    seed: int,
    overrides: dict[str, Any] | None,
    dest: Path,
    progress: Callable[[int, int], None] | None,
) -> Path:
    device = resolve_device(cfg.device, "the simulator knob device (--set device=...)")
    start = time.perf_counter()
    scanner = Scanner(cfg, device)
    splits = ["train"] * cfg.split[0] + ["val"] * cfg.split[1] + ["test"] * cfg.split[2]
    subjects: list[SubjectArrays] = []
    lesions: dict[str, list] = {}
    for k in range(cfg.subjects):
        sim = scanner.simulate_subject(seed, k)
        reference = sim["spet"] if "spet" in sim else sim["activity"]
        scale = full_dose_scale(reference.cpu().numpy())
        arrays = {}
        for key in cfg.outputs:
            if key == "sinogram":
                continue
            arrays[key] = (sim[key] / scale).cpu().numpy()
        columns: dict[str, Any] = {"calibration": sim["calibration"], "sinogram_scale": 0.0}
        if "sinogram" in cfg.outputs:
            sino = _store_sinogram(sim["sinogram"].cpu().numpy(), cfg)
            sino_scale = full_dose_scale(sino)
            arrays["sinogram"] = sino / sino_scale
            columns["sinogram_scale"] = sino_scale
        arrays["lesions"] = sim["lesion_labels"].cpu().numpy()  # ablate.lesions scores them
        name = f"sim{k:04d}"
        lesions[name] = sim["lesions"]
        z = (np.arange(cfg.slices) - (cfg.slices - 1) / 2) * cfg.slice_mm + cfg.z_centre_mm
        subjects.append(
            SubjectArrays(
                subject=name,
                split=splits[k],
                arrays=arrays,
                scale=scale,
                source=f"simulated:{preset}:seed={seed}:subject={k}",
                dose_reduction=cfg.dose_reduction if "lpet" in cfg.outputs else 1.0,
                columns=columns,
                slice_columns={
                    "z_mm": z,
                    "counts": sim["counts"].cpu().numpy(),
                    "expected_counts": sim["expected_counts"].cpu().numpy(),
                },
            )
        )
        if progress is not None:
            progress(k + 1, cfg.subjects)
    provenance = {
        "kind": "simulated",
        "preset": preset,
        "seed": seed,
        "overrides": overrides or {},
        "knobs": cfg.model_dump(mode="json"),
        "ablate_version": package_version(),
        "torch_version": torch.__version__,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 3),
        "keys": {
            "lpet": "low-dose OSEM reconstruction (counts thinned by 1/dose_reduction)",
            "spet": "full-dose OSEM reconstruction with the same algorithm and settings",
            "sinogram": "full-dose measured counts [angles, bins] / sinogram_scale",
            "activity": "true activity map",
        },
        "units": "simulated activity (arbitrary units)",
        "normalisation": NORMALISATION,
        "orientation": "rows anterior->posterior, columns right->left of the subject (RAS x)",
        "attribution": [TEMPLATE_ATTRIBUTION],
        "note": (
            "every simulated subject is a warped copy of the one MNI152 template anatomy: "
            "held-out subjects are not independent anatomies"
        ),
        "lesions": lesions,
    }
    return write_dataset(dest, subjects, provenance)
