"""Which devices a plan knows: each one's memory and dense peak TFLOP/s, the MFU assumed on
it where no benchmark record says better, and which one a launch's trials run on."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ablate.config import ExperimentConfig
from ablate.errors import UserError


@dataclass(frozen=True)
class Device:
    """A device to plan for: its memory and dense peak TFLOP/s per precision."""

    name: str
    kind: str  # "gpu" or "cpu"
    memory_gb: float
    peak_tflops: dict[str, float]
    #: Substrings of ``torch.cuda.get_device_name()`` that identify this device in records.
    aliases: tuple[str, ...] = ()
    note: str = ""


def _host_memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 16.0


#: Dense peaks (no sparsity), SXM parts. "fp32" is the TF32 tensor-core peak: cuDNN runs
#: fp32 convolutions in TF32 by default (``torch.backends.cudnn.allow_tf32``). A CPU's
#: "peak" is per thread (an assumed 50 GFLOP/s: AVX2 FMA at ~3 GHz), times the trial's
#: ``train.num_threads``.
DEVICES: dict[str, Device] = {
    "H100": Device("H100", "gpu", 80.0, {"fp32": 494.7, "bf16": 989.4}, ("H100",)),
    "H200": Device("H200", "gpu", 141.0, {"fp32": 494.7, "bf16": 989.4}, ("H200",)),
    "A100": Device("A100", "gpu", 80.0, {"fp32": 156.0, "bf16": 312.0}, ("A100",)),
    "cpu": Device(
        "cpu",
        "cpu",
        round(_host_memory_gb(), 1),
        {"fp32": 0.05, "bf16": 0.05},
        ("cpu",),
        note="peak per thread",
    ),
}

#: MFU assumed when no record of the device and precision exists, by switches, from H100
#: measurements of row (f) at batch 4 (docs/architecture.md, "What the planner assumes"):
#: fp32 eager 8.5 it/s = 2% of the TF32 peak; bf16 autocast alone no faster than fp32 (1% of
#: the bf16 peak); bf16 + ``torch.compile`` with CUDA graphs (``reduce-overhead``) 36.8 it/s
#: = 4.5%; compile without CUDA graphs gave no gain. A CPU reaches about 20% of its assumed
#: peak.
DEFAULT_MFU = {
    ("gpu", "fp32", False): 0.02,
    ("gpu", "fp32", True): 0.02,
    ("gpu", "bf16", False): 0.01,
    ("gpu", "bf16", True): 0.045,
    ("cpu", "fp32", False): 0.2,
    ("cpu", "fp32", True): 0.2,
    ("cpu", "bf16", False): 0.1,
    ("cpu", "bf16", True): 0.1,
}
#: Sampling reaches about half the training MFU (small per-step batches, no backward).
SAMPLING_MFU_FACTOR = 0.5


def launch_device(exp: ExperimentConfig) -> str:
    """The device a launch's trials run on, for its plan: a CPU when they ask for no GPU,
    else the driver's GPU if it is a known one, else an H100 (the records' GPU)."""
    if exp.resources.gpu == 0:
        return "cpu"
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0)
            for dev in DEVICES.values():
                if dev.kind == "gpu" and any(a.lower() in name.lower() for a in dev.aliases):
                    return dev.name
    except Exception:  # noqa: BLE001 - no usable CUDA on the driver: plan for the default
        pass
    return "H100"


def device_spec(name: str) -> Device:
    """The :class:`Device` called ``name`` (case-insensitive); a one-line error otherwise."""
    for key, dev in DEVICES.items():
        if key.lower() == name.strip().lower():
            return dev
    raise UserError(
        f"--gpu '{name}': no benchmark record and no known peak for it; known: {', '.join(DEVICES)}"
    )
