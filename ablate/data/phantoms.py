"""Brain FDG phantoms from the MNI152 (ICBM 2009a symmetric) grey/white-matter templates.

The templates ship inside the nilearn wheel, so nothing is downloaded. Every subject is the
template anatomy warped by a random affine and a smooth elastic field, with random global
and regional uptake and a few lesions, all drawn from a generator seeded by ``(seed, k)``:
subject ``k`` is the same whatever else is simulated. All subjects share the template's
gyral pattern, so a held-out subject is not an independent anatomy (recorded in every
dataset's provenance).

Image orientation of a slice: rows run anterior (top) to posterior, columns run from the
subject's right to left (x increasing, RAS); slices run inferior to superior.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TEMPLATE_ATTRIBUTION = (
    "MNI ICBM152 2009a nonlinear symmetric template (grey/white-matter maps), as shipped in "
    "nilearn 0.14 (BSD-3): Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging "
    "Centre, Montreal Neurological Institute, McGill University; Fonov et al., NeuroImage "
    "54(1) 2011 and NeuroImage 47 S102 2009. Simulated subjects share this template's anatomy."
)

#: Centre of the simulated field of view in MNI millimetres (x, y); z comes from the config.
BRAIN_CENTRE_XY = (0.0, -18.0)


@dataclass(frozen=True)
class Template:
    """Tissue maps as a ``[1, 2, Z, Y, X]`` tensor (GM, WM probabilities) and the voxel affine."""

    tissues: torch.Tensor
    affine: np.ndarray


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed: it ships the MNI152 templates")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


@functools.lru_cache(maxsize=4)
def load_template(template_mm: int = 1) -> Template:
    """The 1 mm MNI152 GM/WM maps (read directly with nibabel), averaged down to ``template_mm``."""
    import nibabel as nib

    maps, affine = [], None
    for tissue in ("gm", "wm"):
        img = nib.load(
            _nilearn_data_dir() / f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
        )
        data = np.asarray(img.dataobj, dtype=np.float32)
        maps.append(data / data.max())
        affine = img.affine.copy()
    vol = torch.from_numpy(np.stack(maps)).permute(0, 3, 2, 1)[None]  # [1, 2, Z, Y, X]
    if template_mm > 1:
        vol = F.avg_pool3d(vol, template_mm, ceil_mode=True)
        pool = np.diag([template_mm, template_mm, template_mm, 1.0])
        pool[:3, 3] = (template_mm - 1) / 2  # a pooled voxel's centre, in source voxels
        affine = affine @ pool
    return Template(tissues=vol.contiguous(), affine=affine)


@dataclass(frozen=True)
class PhantomSpec:
    """The knobs of the phantom generator (a subset of the simulator config)."""

    image_size: int
    pixel_mm: float
    slices: int
    slice_mm: float
    z_centre_mm: float
    template_mm: int
    rotation_deg: float
    scale_frac: float
    shift_mm: float
    elastic_mm: float
    gm_uptake: float
    wm_uptake: float
    background_uptake: float
    uptake_jitter: float
    regional_jitter: float
    lesions_max: int
    lesion_radius_mm: tuple[float, float]
    hot_fraction: float
    mu_tissue: float
    mu_bone: float
    skull_mm: float
    scalp_mm: float


@dataclass
class Phantom:
    """One subject on the output grid: activity and attenuation (1/mm), ``[S, H, W]`` each."""

    activity: torch.Tensor
    mu: torch.Tensor
    lesions: list[dict]
    lesion_labels: torch.Tensor  # [S, H, W]: lesion i+1 where inside its sphere, else 0


def subject_generator(seed: int, k: int, stream: int, device: torch.device) -> torch.Generator:
    """An independent generator for (dataset seed, subject k, purpose)."""
    state = np.random.SeedSequence([seed, k, stream]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def _uniform(g: torch.Generator, lo: float, hi: float, shape=(), device="cpu") -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device, dtype=torch.float64)


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """3x3 rotation from three angles (radians) about x, y, z."""
    out = torch.eye(3, dtype=torch.float64)
    for axis, a in enumerate(angles.tolist()):
        c, s = math.cos(a), math.sin(a)
        i, j = [(1, 2), (0, 2), (0, 1)][axis]
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def _dilate(mask: torch.Tensor, mm: float, spec: PhantomSpec) -> torch.Tensor:
    """Box dilation of an ``[S, H, W]`` mask by ``mm`` millimetres."""
    rz, rxy = round(mm / spec.slice_mm), round(mm / spec.pixel_mm)
    if rz == 0 and rxy == 0:
        return mask
    kernel = (2 * rz + 1, 2 * rxy + 1, 2 * rxy + 1)
    return F.max_pool3d(mask[None, None], kernel, stride=1, padding=(rz, rxy, rxy))[0, 0]


def output_grid_mm(spec: PhantomSpec) -> torch.Tensor:
    """Physical (x, y, z) millimetres of every output voxel, ``[S, H, W, 3]``."""
    n, s = spec.image_size, spec.slices
    c = (torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * spec.pixel_mm
    z = (torch.arange(s, dtype=torch.float64) - (s - 1) / 2) * spec.slice_mm + spec.z_centre_mm
    zz, yy, xx = torch.meshgrid(z, BRAIN_CENTRE_XY[1] - c, BRAIN_CENTRE_XY[0] + c, indexing="ij")
    return torch.stack([xx, yy, zz], dim=-1)


def make_phantom(spec: PhantomSpec, seed: int, k: int, device: torch.device) -> Phantom:
    """Subject ``k`` of dataset ``seed``: warp the template, assign uptake, add lesions, mu map."""
    g = subject_generator(seed, k, 0, torch.device("cpu"))
    template = load_template(spec.template_mm)
    grid = output_grid_mm(spec)
    # random affine about the brain centre, then a smooth elastic field (both in mm)
    rot = _rotation(torch.deg2rad(_uniform(g, -spec.rotation_deg, spec.rotation_deg, (3,))))
    scale = 1 + _uniform(g, -spec.scale_frac, spec.scale_frac, (3,))
    shift = _uniform(g, -spec.shift_mm, spec.shift_mm, (3,))
    centre = torch.tensor([*BRAIN_CENTRE_XY, spec.z_centre_mm], dtype=torch.float64)
    inverse = torch.linalg.inv(rot * scale[None, :])
    src = (grid - centre - shift) @ inverse.T + centre
    coarse = torch.randn((1, 3, 5, 5, 5), generator=g, dtype=torch.float64) * spec.elastic_mm
    field = F.interpolate(coarse, size=grid.shape[:3], mode="trilinear", align_corners=True)
    src = src + field[0].permute(1, 2, 3, 0)
    # mm -> template voxel indices -> grid_sample's [-1, 1] coordinates (x, y, z order)
    inv_aff = np.linalg.inv(template.affine)
    vox = src @ torch.from_numpy(inv_aff[:3, :3]).T + torch.from_numpy(inv_aff[:3, 3])
    sizes = torch.tensor(template.tissues.shape[2:][::-1], dtype=torch.float64)
    norm = 2 * vox / (sizes - 1) - 1
    tissues = F.grid_sample(
        template.tissues, norm[None].float(), mode="bilinear", align_corners=True
    )[0]
    gm, wm = tissues[0], tissues[1]
    # uptake: global GM/WM jitter and a smooth regional field on grey matter
    jitter = 1 + spec.uptake_jitter * torch.randn((2,), generator=g, dtype=torch.float64)
    regional = torch.randn((1, 1, 4, 4, 4), generator=g, dtype=torch.float64)
    regional = F.interpolate(regional, size=gm.shape, mode="trilinear", align_corners=True)
    regional = torch.exp(spec.regional_jitter * regional[0, 0]).float()
    activity = spec.gm_uptake * float(jitter[0]) * regional * gm
    activity = activity + spec.wm_uptake * float(jitter[1]) * wm
    brain = ((gm + wm) > 0.2).float()
    inner = _dilate(brain, 2.0, spec)
    skull_out = _dilate(brain, 2.0 + spec.skull_mm, spec)
    head = _dilate(brain, 2.0 + spec.skull_mm + spec.scalp_mm, spec)
    activity = activity + spec.background_uptake * (head - skull_out).clamp_min(0)
    mu = spec.mu_tissue * head + (spec.mu_bone - spec.mu_tissue) * (skull_out - inner)
    # lesions: soft spheres centred in brain tissue, hot or cold
    lesions = []
    candidates = torch.nonzero((gm + wm).flatten() > 0.5).squeeze(1)
    n_lesions = (
        int(torch.randint(0, spec.lesions_max + 1, (), generator=g)) if len(candidates) else 0
    )
    flat_grid = grid.reshape(-1, 3).float()
    labels = torch.zeros(activity.shape, dtype=torch.float32)
    for number in range(1, n_lesions + 1):
        pos = flat_grid[candidates[int(torch.randint(len(candidates), (), generator=g))]]
        radius = float(_uniform(g, *spec.lesion_radius_mm))
        hot = float(torch.rand((), generator=g, dtype=torch.float64)) < spec.hot_fraction
        factor = float(_uniform(g, 1.5, 3.0) if hot else _uniform(g, 0.2, 0.5))
        dist = torch.linalg.norm(grid.float() - pos, dim=-1)
        weight = torch.sigmoid((radius - dist) / (0.25 * spec.pixel_mm))
        activity = activity * (1 + (factor - 1) * weight)
        labels[dist < radius] = number
        lesions.append({"centre_mm": pos.tolist(), "radius_mm": radius, "factor": factor})
    return Phantom(activity.to(device), mu.to(device), lesions, labels)
