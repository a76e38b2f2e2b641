"""The names of the test metrics a trial logs and which way each improves.

Torch-free on purpose: the config loader checks claims against these names before a launch,
and must not pay for importing torch to do it. ``ablate.metrics`` computes the values.
"""

from __future__ import annotations

from typing import Literal

#: The quality metrics a trial logs per test set (and per test subject), standard convention.
QUALITY = ("psnr", "ssim", "nmse", "nrmse")
#: Every test metric a trial logs: single sample and AMS, both conventions, and the sampling SD.
TEST_METRICS = (
    *QUALITY,
    *(f"paper_{q}" for q in QUALITY[:3]),
    *(f"ams_{q}" for q in QUALITY),
    *(f"ams_paper_{q}" for q in QUALITY[:3]),
    "sd",
)
#: How many subjects a trial tested (a count, not a quality): the weight of its scores when
#: a cross-validated table pools a seed's folds (``dashboards.tables``).
TEST_SUBJECTS = "test_subjects"


def better(metric: str) -> Literal["max", "min"]:
    """Which way a metric improves: errors (NMSE, NRMSE, lesion errors), the sampling SD and
    costs (params, MACs, training seconds) go down, everything else (PSNR, SSIM, throughput)
    goes up.

    The one owner of a metric's direction: tables, exports and claims all ask here."""
    base = metric.removeprefix("val_").removeprefix("ams_").removeprefix("paper_")
    lower = base in ("nmse", "nrmse", "sd", "params_m", "gmacs") or base.startswith(
        ("train_s", "lesion_abs_")  # lesion_abs_*: sizes of lesion errors
    )
    return "min" if lower else "max"
