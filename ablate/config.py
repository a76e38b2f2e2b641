"""Typed experiment configuration, loaded from the YAML files in ``search_spaces/``.

Every setting of an ablation study lives here as a pydantic model with ``extra="forbid"``:
a misspelled key is an error naming the key, never a silently ignored default (the
reference implementation of paper 003 hard-codes its hyperparameters; we refuse to).

A *row* of an ablation table is data: a method and the switches that method has
(:data:`RowConfig`, one type per method family). Settings are grouped the same way
(``model.sr3``, ``model.coarse_to_fine``, ``diffusion.irm``...): each method reads its own
section and the few settings rows share. The method registry (``ablate.methods.registry``)
turns a trial's row and settings into a model, its loss and its sampler.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ablate import designs
from ablate.errors import UserError
from ablate.shipped import shipped_space, shipped_space_names

#: Seconds a trial waits out an unreachable tracking server or object store (and the driver
#: its tracking server) before it fails: 15 minutes, longer than a server restart, a
#: database failover or most network partitions. ``outage_wait_s`` in a launch's YAML.
OUTAGE_WAIT_S = 900.0


class ConfigError(UserError):
    """A configuration problem, phrased as one line that names the file/key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


ContrastiveForm = Literal["likelihood", "reference_kl"]


class _Row(_Strict):
    """What every row has, whatever its method: a label and optimiser overrides."""

    label: str | None = Field(default=None, description="Human-readable label for tables.")
    lr: float | None = Field(default=None, gt=0, description="Overrides train.lr for this row.")
    weight_decay: float | None = Field(
        default=None, ge=0, description="Overrides train.weight_decay for this row."
    )


class SR3Row(_Row):
    """Row (a) of paper 003: the SR3 conditional DDPM baseline; no component switches."""

    method: Literal["sr3"]


class CoarseToFineRow(_Row):
    """Rows (b)-(f) of paper 003: CPM and its component switches."""

    method: Literal["coarse_to_fine"]
    irm: bool = False
    nas: bool = False
    spectrum: bool = False
    contrastive: bool = False
    contrastive_form: ContrastiveForm = "reference_kl"
    #: Switches that need another switched on (what a generated design switches off with it).
    NEEDS: ClassVar[dict[str, tuple[str, ...]]] = {"contrastive": ("irm",)}

    @model_validator(mode="after")
    def _check(self) -> CoarseToFineRow:
        if self.contrastive and not self.irm:
            raise ValueError(
                "contrastive needs irm: true (the contrastive loss acts on the IRM's one-step "
                "estimate x_cp + r0~); set irm: true or contrastive: false"
            )
        return self


class SinogramRow(_Row):
    """Paper 000's regression and adversarial baselines: sinogram in, image out."""

    method: Literal["deeppet", "cgan", "pix2pix", "vqvae"]


class PMDMRow(_Row):
    """PMDM-PET (diffusion conditioned on a frozen DeepPET estimate) and Palette (without)."""

    method: Literal["pmdm", "palette"]
    estimator: bool | None = Field(
        default=None,
        description="Condition on a frozen DeepPET estimate r0*; "
        "None = the method's default (pmdm: on, palette: off = condition on the sinogram).",
    )
    conditioning: Literal["r0", "r0+sinogram"] = Field(
        default="r0", description="With the estimator: condition on r0* alone or r0* + sinogram."
    )
    sample_steps: int | None = Field(
        default=None, ge=1, description="None = full T-step ancestral, else respaced."
    )
    estimator_checkpoint: str | None = Field(
        default=None, description="A stage-1 DeepPET checkpoint to use instead of the cached one."
    )

    @property
    def uses_estimator(self) -> bool:
        """PMDM uses the estimator unless the row turns it off; Palette never does."""
        return self.method == "pmdm" if self.estimator is None else self.estimator

    @model_validator(mode="after")
    def _check(self) -> PMDMRow:
        if self.method == "palette" and self.estimator:
            raise ValueError(
                "method 'palette' has no estimator (it conditions on the sinogram): "
                "use method 'pmdm' for a DeepPET-conditioned row"
            )
        if not self.uses_estimator and self.conditioning != "r0":
            raise ValueError(
                f"conditioning '{self.conditioning}' needs the estimator: without it the "
                "condition is the sinogram; set estimator: true or drop conditioning"
            )
        if not self.uses_estimator and self.estimator_checkpoint is not None:
            raise ValueError("estimator_checkpoint is set but the row has no estimator: remove it")
        return self


#: One row of an ablation table: a method and the switches that method has. The method
#: picks the row type, so a switch a method cannot honour (``nas`` on ``sr3``) is rejected
#: when the config is read, with every other config error, before anything starts.
RowConfig = Annotated[
    SR3Row | CoarseToFineRow | SinogramRow | PMDMRow, Field(discriminator="method")
]
ROW_TYPES: tuple[type[_Row], ...] = (SR3Row, CoarseToFineRow, SinogramRow, PMDMRow)
MethodName = Literal[
    "sr3", "coarse_to_fine", "deeppet", "pmdm", "palette", "cgan", "pix2pix", "vqvae"
]
METHODS: tuple[str, ...] = get_args(MethodName)


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
    folds: int | None = Field(
        default=None,
        description="k-fold cross-validation over subjects (ablate.data.folds); none: the "
        "dataset's own train/val/test split.",
    )
    fold_seed: int = Field(default=0, description="Seeds the deal of subjects into folds.")
    stratify: str | None = Field(
        default=None, description="A subject column of the manifest to balance the folds by."
    )

    @field_validator("folds", mode="before")
    @classmethod
    def _folds(cls, value: Any) -> Any:
        """``folds: none`` (YAML text, or ``data.folds=none``) keeps the dataset's split; one
        fold would test on the subjects it trained on."""
        if isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value < 2:
            raise ValueError(
                f"{value} fold(s) is not cross-validation: use 2 or more, or none to keep the "
                "dataset's split"
            )
        return value

    @model_validator(mode="after")
    def _absolute_path(self) -> DataConfig:
        """A relative ``path`` is the user's folder: resolved where the config is read, since
        trial workers run in other folders."""
        if self.path is not None and not self.path.is_absolute():
            self.path = self.path.expanduser().resolve()
        return self


class SR3Model(_Strict):
    """The SR3 baseline's denoising UNet (paper scale: 128.7 M parameters)."""

    width: int = Field(default=64, ge=1)
    mults: tuple[int, ...] = (1, 2, 4, 8, 8)
    res_blocks: int = Field(default=3, ge=1)
    attn_res: tuple[int, ...] = Field(
        default=(16,), description="Feature-map sizes with self-attention."
    )


class CoarseToFineModel(_Strict):
    """CPM and IRM UNets of paper 003 and their guidance feature extractors."""

    cpm_width: int = Field(default=64, ge=1)
    cpm_mults: tuple[int, ...] = (1, 2, 3, 4)
    irm_width: int = Field(default=32, ge=1)
    irm_mults: tuple[int, ...] = (1, 2, 3, 4)
    res_blocks: int = Field(default=3, ge=1)
    attn_res: tuple[int, ...] = Field(
        default=(), description="Sizes with attention besides the middle (paper: none)."
    )
    guide_channels: int = Field(default=64, ge=1)
    guide_levels: int = Field(default=3, ge=1)


class DeepPETModel(_Strict):
    """DeepPET, as a row and as PMDM's stage-1 estimator."""

    width: int = Field(default=32, ge=1)


class PMDMModel(_Strict):
    """The denoising UNet of PMDM and Palette."""

    width: int = Field(default=64, ge=1)
    mults: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    res_blocks: int = Field(default=2, ge=1)
    attn_res: tuple[int, ...] = (16,)


class GANModel(_Strict):
    width: int = Field(default=64, ge=1, description="pix2pix/cGAN ngf = ndf.")


class VQVAEModel(_Strict):
    width: int = Field(default=128, ge=1)
    code_dim: int = Field(default=64, ge=1)
    codes: int = Field(default=512, ge=2)


class ModelConfig(_Strict):
    """Networks, one section per method family; each method reads its own section only.
    Paper-scale values are in ``paper_table2.yaml`` / ``pmdm_table1.yaml``."""

    dropout: float = Field(default=0.0, ge=0, lt=1, description="Every UNet's dropout.")
    sr3: SR3Model = Field(default_factory=SR3Model)
    coarse_to_fine: CoarseToFineModel = Field(default_factory=CoarseToFineModel)
    deeppet: DeepPETModel = Field(default_factory=DeepPETModel)
    pmdm: PMDMModel = Field(default_factory=PMDMModel)
    gan: GANModel = Field(default_factory=GANModel)
    vqvae: VQVAEModel = Field(default_factory=VQVAEModel)


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


class _DiffusionKnobs(_Strict):
    """What a diffusion family's network predicts, its schedule's shape and its loss
    weighting; the defaults are both papers' settings (eps, linear, unweighted)."""

    prediction: Literal["eps", "x0", "v"] = Field(
        default="eps",
        description="The network predicts the noise (papers), the clean image, or "
        "v = sqrt(g) eps - sqrt(1 - g) x0 (Salimans & Ho); eps errors are multiplied by "
        "1/sqrt(gamma) in the x0 estimate at the noisy end.",
    )
    schedule: Literal["linear", "cosine"] = Field(
        default="linear",
        description="Training schedule: linear betas (papers; beta_start..beta_end) or "
        "Nichol & Dhariwal's cosine (the betas' ends unused).",
    )
    min_snr: float | None = Field(
        default=None,
        gt=0,
        description="Min-SNR-gamma loss weighting with this cap (Hang et al.: 5); "
        "None = unweighted (papers).",
    )


class SR3Diffusion(_DiffusionKnobs):
    sample_steps: int = Field(
        default=100, ge=1, description="Respaced sampling steps (the paper's cost: 100)."
    )


class IRMDiffusion(_DiffusionKnobs):
    """The IRM's few-step inference schedule, the scale of the residual it diffuses, and its
    parameterisation (paper 003: eps on the linear schedule). With ``schedule: cosine`` it
    trains on the cosine schedule and samples on a ``sample_steps``-step cosine schedule
    (``sample_beta_end`` unused, as the betas' ends are)."""

    sample_steps: int = Field(default=10, ge=1)
    sample_beta_end: float = Field(default=0.5, gt=0, lt=1)
    residual_scale: float = Field(
        default=1.0,
        gt=0,
        description="IRM diffuses (y - x_cp) / residual_scale (1 = paper). The residual is "
        "small next to unit noise; a scale near its std makes eps-prediction errors cost less.",
    )


class PMDMDiffusion(_DiffusionKnobs):
    """PMDM/Palette's own DDPM schedule (T steps; linear betas unless ``schedule``)."""

    train_steps: int = Field(default=1000, ge=2)
    beta_start: float = Field(default=1e-4, gt=0, lt=1)
    beta_end: float = Field(default=2e-2, gt=0, lt=1)


class DiffusionConfig(_Strict):
    """Noise schedules and samplers. The top-level schedule (T steps, linear betas) is the
    training schedule SR3 and the IRM share (paper 003); each family adds its own section."""

    train_steps: int = Field(default=2000, ge=2)
    beta_start: float = Field(default=1e-6, gt=0, lt=1)
    beta_end: float = Field(default=1e-2, gt=0, lt=1)
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
    sr3: SR3Diffusion = Field(default_factory=SR3Diffusion)
    irm: IRMDiffusion = Field(default_factory=IRMDiffusion)
    pmdm: PMDMDiffusion = Field(default_factory=PMDMDiffusion)


class EstimatorTrainConfig(_Strict):
    """PMDM's stage 1: how its DeepPET estimator trains (the other train settings apply)."""

    steps: int | None = Field(default=None, ge=1, description="None = train.steps.")
    lr: float = Field(default=1e-4, gt=0)
    weight_decay: float = Field(default=1e-5, ge=0)


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
    estimator: EstimatorTrainConfig = Field(default_factory=EstimatorTrainConfig)
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

    @property
    def validation_steps(self) -> list[int]:
        """The steps at which a trial validates before its last one: every ``eval_every``
        steps, strictly before ``steps`` (where the final evaluation always runs). The one
        owner of the evaluation schedule: the trainable, ASHA's rungs and the plan read it."""
        if not self.eval_every:
            return []
        return list(range(self.eval_every, self.steps, self.eval_every))

    @property
    def validations(self) -> int:
        """How many validation results a trial reports: :attr:`validation_steps` and the end."""
        return len(self.validation_steps) + 1


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


Mode = Literal["max", "min"]


class SearchConfig(_Strict):
    """An Optuna search over dotted settings of one row, on validation metrics.

    ``metric: psnr, mode: max`` is one objective (TPE with ASHA pruning); lists
    (``metric: [psnr, sd], mode: [max, min]``) make a multi-objective study, whose trials all
    run to the end: ASHA ranks by one metric and would stop trials on the others' front."""

    row: str = Field(description="The row whose knobs are searched.")
    metric: str | list[str] = Field(
        default="psnr", description="Validation metric(s) optimised (val_<metric>)."
    )
    mode: Mode | list[Mode] | None = Field(
        default=None,
        description="One direction per metric (default: the metric's own, "
        "ablate.metric_names.better: max for psnr/ssim, min for nmse and sd).",
    )
    num_samples: int = Field(default=8, ge=1)
    params: dict[str, SearchParam]
    grace_period: int = Field(default=1, ge=1, description="ASHA: evaluations before pruning.")
    reduction_factor: int = Field(default=2, ge=2)

    @model_validator(mode="after")
    def _check_objectives(self) -> SearchConfig:
        metrics = [self.metric] if isinstance(self.metric, str) else self.metric
        if not metrics:
            raise ValueError("search.metric is empty: name a metric, e.g. psnr")
        modes = [self.mode] if isinstance(self.mode, str) else self.mode
        if modes is not None and len(modes) != len(metrics):
            raise ValueError(
                f"search.mode needs one direction per metric: {len(metrics)} metric(s) "
                f"{metrics} but mode {self.mode}; e.g. metric: [psnr, sd], mode: [max, min]"
            )
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"search.metric lists a metric twice: {metrics}")
        return self

    @property
    def objectives(self) -> list[tuple[str, Mode]]:
        """``[(metric, mode), ...]``: one pair per objective, in the declared order; a
        direction not declared is the metric's own (the one owner of metric directions)."""
        from ablate.metric_names import better

        metrics = [self.metric] if isinstance(self.metric, str) else self.metric
        modes = [self.mode] if isinstance(self.mode, str) else self.mode
        return list(zip(metrics, modes or [better(m) for m in metrics], strict=True))

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


Correction = Literal["holm", "bh"]

#: Units a replication budget is given in: trial-hours, as hours, minutes or seconds.
BUDGET_UNITS = {"h": 1.0, "m": 1 / 60, "s": 1 / 3600}


def budget_hours(text: str) -> float:
    """``"200h"`` / ``"90m"`` / ``"30s"`` -> trial-hours. A number without its unit is refused:
    a budget of "200" could be hours or GPU-hours or seconds."""
    value, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        hours = float(value) * BUDGET_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(
            f"budget '{text}': write trial-hours as a number and its unit, e.g. 200h, 90m or 600s"
        ) from None
    if hours <= 0:
        raise ValueError(f"budget '{text}' must be more than 0")
    return hours


class ReplicateConfig(_Strict):
    """Adaptive replication (``ablate run --until-resolved``, :mod:`ablate.launch.replicate`): seed
    waves until the contrasts and claims resolve, ``max_seeds`` seeds per row are reached or
    ``budget`` (trial-hours: the summed wall time of the launch's finished trials) is spent."""

    max_seeds: int = Field(ge=2, description="The most seeds any row gets (the seed cap).")
    budget: str | None = Field(
        default=None, description="Trial-hours the launch may spend, with a unit: 200h, 90m."
    )

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: Any) -> str | None:
        if value is None:
            return None
        budget_hours(str(value))  # a bare number (budget: 200) is refused with the units
        return str(value)

    @property
    def budget_hours(self) -> float | None:
        return None if self.budget is None else budget_hours(self.budget)


class AnalysisConfig(_Strict):
    """Which contrasts the table tests, and how it corrects for testing several.

    ``contrasts``: ``additive`` (each row against the one before it: an ablation that adds one
    component per row, Table 2's reading), ``reference`` (each row against the reference row:
    ``reference:`` when the config has one, else the first row; competing methods), or explicit
    pairs ``[[full, sr3], [pmdm, palette]]`` (first minus second). The default is
    ``reference``, the reading of the table's existing p column."""

    contrasts: Literal["additive", "reference"] | list[tuple[str, str]] = "reference"
    correction: Correction = Field(
        default="holm", description="holm (family-wise, default) or bh (Benjamini-Hochberg)."
    )
    replicate: ReplicateConfig | None = Field(
        default=None, description="Seed waves until the contrasts resolve (max_seeds, budget)."
    )


class BetterClaim(_Strict):
    """``{better: full, than: sr3, metric: psnr}``: row ``better`` beats row ``than``."""

    better: str
    than: str
    metric: str

    @property
    def rows(self) -> list[str]:
        return [self.better, self.than]


class TrendClaim(_Strict):
    """``{trend: [a, b, c], metric: sd, direction: decreasing}``: the metric moves one way
    along the rows (tested as the least-squares slope over the rows' positions)."""

    trend: list[str]
    metric: str
    direction: Literal["increasing", "decreasing"]

    @property
    def rows(self) -> list[str]:
        return list(self.trend)


Claim = BetterClaim | TrendClaim


class DesignConfig(_Strict):
    """Rows generated from the full row's switches (``ablate.designs``): ``additive`` (in the
    listed order), ``leave_one_out``, ``factorial`` or ``fractional`` (with ``resolution``).
    The generated rows join the YAML's rows when the YAML is read."""

    full: str = Field(description="The row whose switches the design turns off.")
    factors: list[str] = Field(min_length=1, description="Boolean switches of the full row.")
    kind: designs.Kind
    resolution: int | None = Field(
        default=None, ge=3, description="fractional only: the least resolution (3, 4, 5...)."
    )

    @model_validator(mode="after")
    def _check(self) -> DesignConfig:
        if len(set(self.factors)) != len(self.factors):
            raise ValueError(f"design.factors lists a factor twice: {self.factors}")
        if self.kind == "fractional" and self.resolution is None:
            raise ValueError("a fractional design needs resolution: (e.g. 4)")
        if self.kind != "fractional" and self.resolution is not None:
            raise ValueError(f"resolution is for kind: fractional, not {self.kind}: drop it")
        if self.kind in ("factorial", "fractional") and len(self.factors) < 2:
            raise ValueError(f"a {self.kind} design needs at least 2 factors")
        return self


class ExperimentConfig(_Strict):
    """A whole study: rows x seeds (x grid axes), shared settings, optional Optuna search."""

    name: str
    rows: dict[str, RowConfig]
    design: DesignConfig | None = Field(
        default=None,
        description="Rows generated from the full row's switches, added when the YAML is read.",
    )
    reference: str | None = Field(
        default=None,
        description="The row every other row is tested against in the table (default: the "
        "first row).",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1])
    run_folds: list[int] | None = Field(
        default=None,
        description="With data.folds: the folds to run (--folds 1,3); default all of them.",
    )
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
    #: The direction of ``metric`` when it is not the metric's own (default: its own).
    mode: Literal["max", "min"] | None = None
    max_failures: int = Field(default=1, ge=0)
    outage_wait_s: float = Field(
        default=OUTAGE_WAIT_S,
        gt=0,
        description="Seconds a trial waits for an unreachable tracking server or object store "
        "(training goes on; its tracking writes wait in its checkpoint) before it fails in one "
        "line; each Ray retry and `ablate resume` waits as long again.",
    )
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    claims: list[Claim] = Field(default_factory=list)
    #: The rows as the YAML lists them, kept when ``--rows`` selects some (a copy keeps it).
    _yaml_rows: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if not self.rows:
            raise ValueError("'rows' is empty: list at least one row")
        if self.search is not None and self.search.row not in self.rows:
            raise ValueError(f"search.row '{self.search.row}' is not one of the rows")
        if self.run_folds is not None:
            k = self.data.folds
            if k is None:
                raise ValueError("--folds (run_folds) needs data.folds: k: set data.folds=K")
            outside = [f for f in self.run_folds if not 0 <= f < k]
            if outside or not self.run_folds:
                raise ValueError(
                    f"run_folds {self.run_folds}: name folds among 0..{k - 1} (data.folds: {k})"
                )
        _check_analysis(self)
        self._yaml_rows = list(self.rows)
        return self

    @property
    def row_order(self) -> list[str]:
        """Every row of the YAML in its order, those ``--rows`` left out included: the order
        of the table's lines, whatever order launches ran in."""
        return list(self._yaml_rows) or list(self.rows)

    @property
    def reference_row(self) -> str:
        """The row the table tests against: ``reference:``, else the YAML's first row."""
        return self.reference or self.row_order[0]

    @property
    def direction(self) -> Mode:
        """Which way ``metric`` improves: ``mode`` where the YAML sets it, else the metric's
        own (an ``nmse`` launch keeps its lowest checkpoints, not its highest)."""
        from ablate.metric_names import better

        return self.mode or better(self.metric)


def _check_analysis(exp: ExperimentConfig) -> None:
    """Claims name metrics that exist, and a trend has two rows or more (the rows they name
    are checked with the reference by :func:`check_row_names`)."""
    from ablate.metric_names import TEST_METRICS

    for i, claim in enumerate(exp.claims):
        if isinstance(claim, TrendClaim) and len(claim.trend) < 2:
            raise ValueError(
                f"claims[{i}]: a trend needs at least 2 rows, got {claim.trend}; list the rows "
                "in the order the metric should move"
            )
        if claim.metric not in TEST_METRICS:
            raise ValueError(
                f"claims[{i}]: unknown metric '{claim.metric}' (use one of "
                f"{', '.join(TEST_METRICS)})"
            )


class TrialConfig(_Strict):
    """Everything one trial needs: a row, a seed and the shared settings, resolved.

    Built only by :func:`ablate.trials.trial_config`, the one place a trial's settings are
    resolved (grid axes, search samples, confirm runs, resume and CLI overrides alike)."""

    experiment: str
    row_name: str
    row: RowConfig
    seed: int
    fold: int | None = None
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    diffusion: DiffusionConfig
    train: TrainConfig


#: The sections of an experiment every trial of it shares (and may override).
SHARED_SECTIONS = ("data", "model", "loss", "diffusion", "train")


_CLAIM_KINDS = ("BetterClaim", "TrendClaim")  # pydantic names the union member in a location


def _location(loc: tuple[int | str, ...]) -> str:
    """A dotted config path from a pydantic error location, without the method tag pydantic
    inserts inside a row (``rows.cpm.coarse_to_fine.nass`` -> ``rows.cpm.nass``)."""
    parts = [str(p) for p in loc if p not in _CLAIM_KINDS]
    kept = [
        p
        for i, p in enumerate(parts)
        if not (
            p in METHODS and (i == 0 or parts[i - 1] == "row" or parts[i - 2 : i - 1] == ["rows"])
        )
    ]
    return ".".join(kept) or "(top level)"


def did_you_mean(dotted: str, key: str, valid: list[str]) -> str:
    """The hint for an unknown ``key`` (the last part of ``dotted``) among the ``valid`` keys
    beside it: the closest one, else all of them. The one wording of that hint, for a YAML's
    keys and the command line's ``key=value`` alike."""
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    where = dotted[: -len(key)] if dotted.endswith(key) else ""
    return f"did you mean '{where}{close[0]}'?" if close else f"valid here: {', '.join(valid)}"


def _unwrap(annotation: Any) -> Any:
    """``Annotated[X, ...]`` and ``X | None`` -> ``X``; other unions (a row) stay unions."""
    if typing.get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _keys_at(root: Any, loc: list[str]) -> list[str]:
    """The keys valid at a pydantic error location below the config type ``root`` (``[]``
    where the walk cannot tell). Inside a row pydantic names the row's method tag, which
    picks the row type."""
    node = _unwrap(root)
    for part in loc:
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = node.model_fields.get(part)
            if field is None:
                return []
            node = _unwrap(field.annotation)
        elif typing.get_origin(node) is dict:
            node = _unwrap(get_args(node)[1])
        elif typing.get_origin(node) in (typing.Union, types.UnionType):
            rows = [t for t in get_args(node) if isinstance(t, type) and issubclass(t, _Row)]
            node = next(
                (t for t in rows if part in get_args(t.model_fields["method"].annotation)), None
            )
        else:
            return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def format_validation_error(err: ValidationError, source: str, root: Any = None) -> str:
    """The first problem of ``err`` as one line naming ``source``, the key and the fix; with
    ``root`` (the type validated), an unknown key names the closest valid one."""
    first = err.errors()[0]
    where = _location(first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        loc = [str(p) for p in first["loc"]]
        tag = next((p for p in loc if p in METHODS), None)
        owner = f" for method '{tag}'" if tag else ""
        valid = _keys_at(root, loc[:-1]) if root is not None else []
        hint = did_you_mean(where, loc[-1], valid) if valid else "check its spelling"
        return f"{source}: unknown key '{where}'{owner}: {hint}"
    if kind == "missing":
        return f"{source}: missing required key '{where}'"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"{source}: invalid value for '{where}.method': use one of {', '.join(METHODS)}"
    parts = [str(p) for p in first["loc"]]
    row = f"row '{parts[1]}': " if len(parts) > 1 and parts[0] == "rows" else ""
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:  # a check of the whole config (ExperimentConfig._check)
        return f"{source}: {message}"
    return f"{source}: {row}invalid value for '{where}': {message}"


def load_experiment(path: str | Path, design: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load and validate an experiment YAML; any problem is a one-line :class:`ConfigError`.
    ``design`` replaces keys of the YAML's ``design:`` (``ablate plan --compare-designs``)."""
    path = Path(path)
    if not path.is_file() and path.parent == Path("."):
        path = shipped_space(path.name) or path  # a shipped space by name: `paper_table2`
    if not path.is_file():
        shipped = ", ".join(shipped_space_names())
        raise ConfigError(f"config file not found: {path} (pass a YAML path, or one of: {shipped})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{line}: fix the syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    if design is not None:
        raw = {**raw, "design": {**(raw.get("design") or {}), **design}}
    exp = parse_experiment(with_design(raw, str(path)), source=str(path))
    check_row_names(exp, str(path))
    return exp


def with_design(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """An experiment YAML's mapping with its design's rows added after its own rows.

    Done where a YAML is read, never by the model: a launch record holds the rows already
    (and a ``--rows`` launch only some of them). A leave-one-out or additive design whose YAML
    names no ``analysis.contrasts`` gets the design's own: each row against the full row,
    each row against the one before it."""
    if not raw.get("design"):
        return raw
    exp = parse_experiment(raw, source)
    assert exp.design is not None
    try:
        design = designs.generate(exp.design, exp.rows)
    except designs.DesignError as err:
        raise ConfigError(f"{source}: {err}") from None
    rows = dict(raw["rows"])
    rows.update({p.name: p.row.model_dump(mode="json") for p in design.points if p.generated})
    out = {**raw, "rows": rows}
    analysis = dict(raw.get("analysis") or {})
    if "contrasts" not in analysis and design.kind in ("leave_one_out", "additive"):
        names = design.rows
        if design.kind == "leave_one_out":
            analysis["contrasts"] = [[design.full, n] for n in names if n != design.full]
        else:
            analysis["contrasts"] = [[b, a] for a, b in zip(names, names[1:], strict=False)]
        out["analysis"] = analysis
    return out


def check_row_names(exp: ExperimentConfig, source: str) -> None:
    """Refuse a ``reference:``, a contrast or a claim naming no row, before anything runs.
    Checked where a user writes them (the YAML, the command line), not by the model: a launch
    of ``--rows cpm`` keeps the YAML's reference ``sr3`` and its claims about ``full`` in its
    record, and reading that record back (a trial's worker, ``ablate resume``) is fine."""
    rows = exp.row_order
    if exp.reference is not None and exp.reference not in rows:
        raise ConfigError(
            f"{source}: reference '{exp.reference}' is not a row of experiment '{exp.name}': "
            f"name one of {', '.join(rows)}, or drop 'reference:' to test against "
            "the first row"
        )
    pairs = exp.analysis.contrasts if isinstance(exp.analysis.contrasts, list) else []
    named = [(f"analysis.contrasts[{i}]", pair) for i, pair in enumerate(pairs)]
    named += [(f"claims[{i}]", claim.rows) for i, claim in enumerate(exp.claims)]
    for where, names in named:
        for name in names:
            if name not in rows:
                raise ConfigError(
                    f"{source}: {where} names row '{name}', not a row of this config "
                    f"(rows: {', '.join(rows)})"
                )


def parse_experiment(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, ExperimentConfig)) from None


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested settings to dotted keys (``model.sr3.width``) for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_ROW_ADAPTER: TypeAdapter[Any] = TypeAdapter(RowConfig)


def parse_row(raw: dict[str, Any], source: str = "row") -> RowConfig:
    """A row from its YAML mapping (``{"method": "coarse_to_fine", "irm": True}``)."""
    try:
        return _ROW_ADAPTER.validate_python(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, RowConfig)) from None
