"""Typed experiment configuration, loaded from the YAML files in ``search_spaces/``.

Every setting of an ablation study lives here as a pydantic model with ``extra="forbid"``:
a misspelled key is an error naming the key, never a silently ignored default (the
reference implementation of paper 003 hard-codes its hyperparameters; we refuse to).

A *row* of an ablation table is data: a named set of switches (:class:`RowConfig`). The
method registry (``ablate.methods.registry``) turns a row plus the shared model, loss and
sampling settings into a model, its loss and its sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ablate.errors import UserError


class ConfigError(UserError):
    """A configuration problem, phrased as one line that names the file/key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


MethodName = Literal[
    "sr3", "coarse_to_fine", "deeppet", "pmdm", "palette", "cgan", "pix2pix", "vqvae"
]
ContrastiveForm = Literal["likelihood", "reference_kl"]


class RowConfig(_Strict):
    """One row of an ablation table: a method and its component switches.

    The switches only make sense for ``coarse_to_fine``; the registry rejects combinations
    a method cannot build (e.g. ``nas`` on ``sr3``) with a message saying why.
    """

    method: MethodName
    irm: bool = False
    nas: bool = False
    spectrum: bool = False
    contrastive: bool = False
    contrastive_form: ContrastiveForm = "reference_kl"
    label: str | None = Field(default=None, description="Human-readable label for tables.")
    estimator: bool | None = Field(
        default=None,
        description="PMDM family: condition on a frozen DeepPET estimate r0*; "
        "None = the method's default (pmdm: on, palette: off = condition on the sinogram).",
    )
    conditioning: Literal["r0", "r0+sinogram"] = Field(
        default="r0", description="PMDM with estimator: condition on r0* alone or r0* + sinogram."
    )
    sample_steps: int | None = Field(
        default=None, ge=1, description="PMDM/Palette: None = full T-step ancestral, else respaced."
    )
    estimator_checkpoint: str | None = Field(
        default=None,
        description="PMDM: a stage-1 DeepPET checkpoint to use instead of the cached one.",
    )
    lr: float | None = Field(default=None, gt=0, description="Overrides train.lr for this row.")
    weight_decay: float | None = Field(
        default=None, ge=0, description="Overrides train.weight_decay for this row."
    )


class DataConfig(_Strict):
    """Which dataset a study trains on: a simulator preset (built once per launch) or a folder."""

    preset: Literal["tiny", "lowdose-128", "sinogram-256"] = "tiny"
    path: Path | None = Field(
        default=None, description="An existing dataset folder (skips simulation)."
    )
    seed: int = 0
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Simulator knobs overriding the preset."
    )


class ModelConfig(_Strict):
    """Network widths shared by the rows. Paper-scale values are in ``paper_table2.yaml``."""

    cpm_width: int = 64
    cpm_mults: tuple[int, ...] = (1, 2, 3, 4)
    irm_width: int = 32
    irm_mults: tuple[int, ...] = (1, 2, 3, 4)
    sr3_width: int = 64
    sr3_mults: tuple[int, ...] = (1, 2, 4, 8, 8)
    res_blocks: int = 3
    attn_res: tuple[int, ...] = Field(
        default=(16,), description="SR3 baseline: feature-map sizes with self-attention."
    )
    c2f_attn_res: tuple[int, ...] = Field(
        default=(), description="CPM/IRM: sizes with attention besides the middle (paper: none)."
    )
    dropout: float = 0.0
    guide_channels: int = 64
    guide_levels: int = 3
    deeppet_width: int = 32
    gan_width: int = Field(default=64, description="pix2pix ngf = ndf.")
    vqvae_width: int = 128
    vqvae_code_dim: int = 64
    vqvae_codes: int = 512
    pmdm_width: int = 64
    pmdm_mults: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    pmdm_res_blocks: int = 2
    pmdm_attn_res: tuple[int, ...] = (16,)


class LossConfig(_Strict):
    """Weights of eq. 9 of paper 003: L = L_main + m L_G^NAS + n L_G^spec + k L_CL."""

    m: float = Field(default=1.0, ge=0)
    n: float = Field(default=1.0, ge=0)
    k: float = Field(default=5e-5, ge=0)
    negatives: int = Field(default=10, ge=1, description="N negatives per sample (paper: 10).")
    cpm: float = Field(
        default=0.0,
        ge=0,
        description="IRM rows: weight of an extra L2 loss on the CPM output (paper: 0; "
        "> 0 steadies joint CPM + IRM training from scratch).",
    )
    gan_l1: float = Field(default=100.0, ge=0, description="pix2pix/cGAN L1 weight (lambda).")
    vq_beta: float = Field(default=0.25, ge=0, description="VQ-VAE commitment weight.")


class DiffusionConfig(_Strict):
    """Noise schedules: training (T steps) and inference (few steps) are set separately."""

    train_steps: int = Field(default=2000, ge=2)
    beta_start: float = 1e-6
    beta_end: float = 1e-2
    irm_sample_steps: int = Field(default=10, ge=1)
    irm_sample_beta_end: float = 0.5
    residual_scale: float = Field(
        default=1.0,
        gt=0,
        description="IRM diffuses (y - x_cp) / residual_scale (1 = paper). The residual is "
        "small next to unit noise; a scale near its std makes eps-prediction errors cost less.",
    )
    sr3_sample_steps: int = Field(default=100, ge=1)
    sampler: Literal["ddpm", "ddim"] = Field(
        default="ddpm",
        description="SR3/PMDM/Palette reverse process: 'ddpm' ancestral or 'ddim' (Song et al.) "
        "over the same (respaced) steps; the IRM always samples with DDPM.",
    )
    ddim_eta: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="DDIM noise: 0 = deterministic given x_T, 1 = DDPM's ancestral posterior.",
    )
    ams_samples: int = Field(default=10, ge=1, description="K samples for AMS and SD.")
    pmdm_train_steps: int = Field(default=1000, ge=2, description="PMDM/Palette T (DDPM).")
    pmdm_beta_start: float = 1e-4
    pmdm_beta_end: float = 2e-2


class TrainConfig(_Strict):
    steps: int = Field(default=300, ge=1)
    batch_size: int = Field(default=4, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    log_every: int = Field(default=25, ge=1, description="Steps between MLflow loss logs.")
    eval_every: int = Field(default=0, ge=0, description="0: evaluate only at the end.")
    eval_slices: int = Field(default=16, ge=1, description="Test slices used for metrics.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(default=1, ge=1, description="torch threads per trial.")
    loader_workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    estimator_steps: int | None = Field(
        default=None, ge=1, description="PMDM stage-1 DeepPET steps; None = train.steps."
    )
    estimator_lr: float = Field(default=1e-4, gt=0, description="PMDM stage-1 Adam lr.")
    estimator_weight_decay: float = Field(default=1e-5, ge=0, description="PMDM stage-1 wd.")
    precision: Literal["fp32", "bf16"] = Field(
        default="fp32", description="bf16: autocast forward/loss and sampling; fp32 weights."
    )
    channels_last: bool = Field(default=False, description="NHWC weights and batches.")
    compile: bool = Field(default=False, description="torch.compile the method's networks.")
    compile_mode: str = Field(default="default", description="torch.compile mode.")
    fused_adam: bool = Field(default=False, description="Fused Adam kernels (CUDA only).")
    ema_decay: float = Field(
        default=0.0, ge=0, lt=1, description="EMA of weights for eval/export; 0 = off."
    )


class ResourcesConfig(_Strict):
    cpu: float = Field(default=1.0, gt=0)
    gpu: float = Field(default=0.0, ge=0)
    max_concurrent: int = Field(default=0, ge=0, description="0: as many as resources allow.")


class SearchParam(_Strict):
    """One dimension of an Optuna search, addressed by a dotted config path (``loss.k``)."""

    type: Literal["loguniform", "uniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchParam:
        if self.type == "choice" and not self.values:
            raise ValueError("a 'choice' parameter needs 'values'")
        if self.type != "choice" and (self.low is None or self.high is None):
            raise ValueError(f"a '{self.type}' parameter needs 'low' and 'high'")
        return self


class SearchConfig(_Strict):
    row: str = Field(description="The row whose knobs are searched.")
    metric: str = "psnr"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(default=8, ge=1)
    params: dict[str, SearchParam]
    grace_period: int = Field(default=1, ge=1, description="ASHA: evaluations before pruning.")
    reduction_factor: int = Field(default=2, ge=2)


class ExperimentConfig(_Strict):
    """A whole study: rows x seeds (x grid axes), shared settings, optional Optuna search."""

    name: str
    rows: dict[str, RowConfig]
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="Extra grid axes: dotted config path -> values."
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    search: SearchConfig | None = None
    metric: str = "psnr"
    mode: Literal["max", "min"] = "max"
    max_failures: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if not self.rows:
            raise ValueError("'rows' is empty: list at least one row")
        if self.search is not None and self.search.row not in self.rows:
            raise ValueError(f"search.row '{self.search.row}' is not one of the rows")
        return self


class TrialConfig(_Strict):
    """Everything one trial needs: a row, a seed and the shared settings, resolved."""

    experiment: str
    row_name: str
    row: RowConfig
    seed: int
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    diffusion: DiffusionConfig
    train: TrainConfig


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{where}' (check its spelling; see ablate/config.py)"
    if first["type"] == "missing":
        return f"{source}: missing required key '{where}'"
    return f"{source}: invalid value for '{where}': {first['msg']}"


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Load and validate an experiment YAML; any problem is a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (pass a YAML from search_spaces/)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return parse_experiment(raw, source=str(path))


def parse_experiment(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``config['a']['b'] = value`` for ``dotted='a.b'``, failing on unknown sections."""
    keys = dotted.split(".")
    node = config
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            raise ConfigError(f"grid/search key '{dotted}': '{key}' is not a config section")
        node = node[key]
    node[keys[-1]] = value


def trial_configs(exp: ExperimentConfig, seeds: list[int] | None = None) -> list[TrialConfig]:
    """Expand rows x seeds x grid axes into one validated :class:`TrialConfig` per trial."""
    import itertools

    seeds = exp.seeds if seeds is None else seeds
    axes = list(exp.grid.items())
    combos = list(itertools.product(*(values for _, values in axes))) if axes else [()]
    out: list[TrialConfig] = []
    for row_name, row in exp.rows.items():
        for combo in combos:
            for seed in seeds:
                raw = {
                    "experiment": exp.name,
                    "row_name": row_name,
                    "row": row.model_dump(),
                    "seed": seed,
                    "data": exp.data.model_dump(mode="json"),
                    "model": exp.model.model_dump(),
                    "loss": exp.loss.model_dump(),
                    "diffusion": exp.diffusion.model_dump(),
                    "train": exp.train.model_dump(),
                }
                for (key, _), value in zip(axes, combo, strict=True):
                    set_dotted(raw, key, value)
                try:
                    out.append(TrialConfig.model_validate(raw))
                except ValidationError as err:
                    raise ConfigError(_format_validation_error(err, f"row '{row_name}'")) from None
    return out


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested settings to dotted keys (``model.irm_width``) for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
