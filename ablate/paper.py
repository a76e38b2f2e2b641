"""Numbers the two papers report, so tables and ``ablate count`` can show them beside ours.

Paper 003 (Han et al., MICCAI 2023), Table 2, public dataset, LPET -> SPET at DRF 100;
metrics in the paper's own convention (see ``ablate.metrics``). ``None``: not reported.
Paper 000 (PMDM-PET), Table 1, sinogram -> PET; mean (std) over test slices.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    """One row of a paper table; ``gflops`` is what paper 003 calls BFLOPs (really GMACs)."""

    label: str
    psnr: float | None = None
    ssim: float | None = None
    nmse: float | None = None
    params_m: float | None = None
    gflops: float | None = None
    ams_psnr: float | None = None
    ams_ssim: float | None = None
    ams_nmse: float | None = None
    sd: float | None = None
    psnr_std: float | None = None
    ssim_std: float | None = None
    nrmse: float | None = None


#: Paper 003, Table 2, keyed by the row names of ``search_spaces/paper_table2.yaml``.
TABLE2: dict[str, PaperRow] = {
    "sr3": PaperRow(
        "(a) SR3 baseline", 23.302, 0.962, 0.058, 128.740, 5973, 23.850, 0.968, 0.052, 6.16e-3
    ),
    "cpm": PaperRow("(b) CPM", 24.354, 0.963, 0.049, 24.740, 38),
    "cpm_irm": PaperRow(
        "(c) +IRM", 24.015, 0.966, 0.044, 31.020, 132, 24.339, 0.967, 0.041, 3.78e-3
    ),
    "cpm_irm_nas": PaperRow(
        "(d) +NAS", 24.668, 0.969, 0.046, 33.040, 140, 24.752, 0.970, 0.044, 3.41e-3
    ),
    "cpm_irm_nas_spec": PaperRow(
        "(e) +spectrum", 25.208, 0.972, 0.044, 34.100, 145, 25.376, 0.973, 0.043, 3.30e-3
    ),
    "full": PaperRow("(f) +L_CL", 25.638, 0.974, 0.033, 34.100, 145, 25.876, 0.975, 0.032, 2.49e-3),
}

#: Paper 000, Table 1, keyed by the row names of ``search_spaces/pmdm_table1.yaml``.
TABLE1: dict[str, PaperRow] = {
    "deeppet": PaperRow("DeepPET", 27.10, 0.938, psnr_std=1.01, ssim_std=0.007, nrmse=0.044),
    "cgan": PaperRow("cGAN", 22.20, 0.909, psnr_std=3.12, ssim_std=0.035, nrmse=0.084),
    "pix2pix": PaperRow("pix2pix", 22.43, 0.915, psnr_std=3.25, ssim_std=0.036, nrmse=0.082),
    "vqvae": PaperRow("VQ-VAE", 20.86, 0.873, psnr_std=2.16, ssim_std=0.023, nrmse=0.093),
    "palette": PaperRow("Palette", 25.40, 0.945, psnr_std=1.00, ssim_std=0.007, nrmse=0.054),
    "pmdm": PaperRow("PMDM-PET", 26.01, 0.950, psnr_std=1.03, ssim_std=0.006, nrmse=0.050),
}
