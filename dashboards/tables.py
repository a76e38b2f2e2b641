"""The ablation table: one line per row, mean +- std over seeds, best per column, paired tests.

:func:`ablation_table` turns a results frame (``dashboards.results``) into an
:class:`AblationTable`; :func:`render` writes it as Markdown, LaTeX (booktabs), CSV or HTML and
:func:`to_rich` as a terminal table. Nothing is dropped silently: failed, pruned or still
running trials, and trials without the table's metrics, show up as failed lines or notes.

Significance: every line is compared with a reference line (default: the first row) by a
paired test on the table's main metric, over seeds when at least two seeds match, otherwise
over the test slices of ``test_metrics.parquet`` (averaged over the line's seeds), and the
table says which.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table as RichTable
from scipy import stats

from ablate import confounds, metric_names
from ablate.errors import UserError
from ablate.metric_names import TEST_SUBJECTS
from ablate.paper import TABLE1, TABLE2, PaperRow
from dashboards.render import Cell, Grid, GridLine, render_as, wide_console
from dashboards.render import to_rich as grid_to_rich

Convention = Literal["standard", "paper"]
Format = Literal["md", "latex", "csv", "html"]
PairedTest = Literal["t", "wilcoxon"]
SliceLoader = Callable[[list[str]], pd.DataFrame]

#: Quality metrics whose names differ between conventions; the rest are convention-free.
_QUALITY = ["psnr", "ssim", "nmse"]
_TITLES = {"psnr": "PSNR", "ssim": "SSIM", "nmse": "NMSE", "nrmse": "NRMSE", "sd": "SD"}
_TEST_NAMES = {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}
#: What a line's paired test matched, by the last word of its 'test' column.
_BASES = {"seeds": "seeds", "pairs": "(seed, fold) pairs", "slices": "test slices"}
#: Params that never make a line of their own. ``data.path`` names a folder, not data: the
#: dataset is told by its content hash, and a table holds one dataset
#: (``dashboards.results.dataset_trials``), so trials on other data are never in it at all.
_PARAM_NAMES_NOT_VARIANTS = ("seed", "fold", "row.label", "data.path")


@dataclass(frozen=True)
class Column:
    """A table column: the MLflow metric it shows and which direction is better."""

    key: str
    title: str
    better: Literal["max", "min"]
    fmt: str
    paper_attr: str | None = None
    spread: bool = True  # False for deterministic costs (params, MACs): no std shown

    def format(self, value: float) -> str:
        if self.fmt != "auto":
            return format(value, self.fmt)
        size = abs(value)
        return f"{value:.0f}" if size >= 100 else f"{value:.2f}" if size >= 1 else f"{value:.3g}"


@dataclass
class Line:
    """One line of the table: a row (or a row's grid variant) measured, or the paper's numbers."""

    name: str
    row: str
    label: str
    kind: Literal["measured", "paper", "input"] = "measured"
    status: str = "ok"
    n: int = 0
    total: int = 0
    values: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    best: set[str] = field(default_factory=set)
    p_value: float | None = None
    test: str = ""
    reason: str = ""
    run_ids: list[str] = field(default_factory=list)
    seeds: list[int | None] = field(default_factory=list)
    #: The fold of each of ``run_ids`` (None: not cross-validated)
    folds: list[int | None] = field(default_factory=list)
    #: Every trial of the line, finished or not, as (run id, seed, status as the table counts
    #: it): the dashboard's counts and training curves show the same trials as the table.
    trials: list[tuple[str, int | None, str]] = field(default_factory=list)


@dataclass
class AblationTable:
    experiment: str
    convention: Convention
    metric: str
    reference: str | None
    paired_test: PairedTest
    columns: list[Column]
    lines: list[Line]
    notes: list[str]
    title: str = ""  # the caption's subject; default "Ablation study '<experiment>'"
    # the contrasts, claims and variance shares of the same trials (dashboards.contrasts),
    # shown under the table in every format but CSV (one table per CSV: ``--part``)
    analysis_tables: list[Any] = field(default_factory=list)
    #: The one dataset the table's trials trained on: name and content hash ("": not recorded)
    dataset: tuple[str, str] = ("", "")
    #: The study's other datasets, each a table of its own (``ablate table NAME --data ...``)
    other_datasets: list[str] = field(default_factory=list)
    like_for_like: str = ""  # what rows differ in beyond their switches (ablate.confounds)
    #: Cross-validated trials: the number of folds (0: the dataset's own split) and their hash
    folds: int = 0
    fold_hash: str = ""

    def __rich__(self) -> RichTable:
        """So ``console.print(table)`` prints the terminal table."""
        return to_rich(self)

    @property
    def caption(self) -> str:
        conv = (
            "paper-003 metric convention (per slice: full-dose pixels <= 0.05 zeroed, masked "
            "data range; mean over slices with foreground)"
            if self.convention == "paper"
            else "standard metric convention (PSNR, SSIM, NMSE over each test subject's volume, "
            "mean over subjects)"
        )
        subject = self.title or f"Ablation study '{self.experiment}'"
        name, sha = self.dataset
        if name:
            subject += f" on dataset '{name}' (sha256 {sha[:8]})"
        if self.folds:
            text = (
                f"{subject}, {conv}, cross-validated over {self.folds} subject folds "
                f"(fold hash {self.fold_hash[:8]}): each test subject scored once per seed. "
                "Mean over the test subjects pooled across folds ± std over seeds (n: completed "
                "(seed, fold) trials / all); best measured value per column in bold."
            )
        else:
            text = (
                f"{subject}, {conv}. Mean ± std over seeds (n: completed "
                "trials / all); best measured value per column in bold."
            )
        if any(line.kind == "input" for line in self.lines):
            text += f" {INPUT_LABEL}: the low-dose image itself, scored the same way (not bolded)."
        if any(c in self.columns for c in LESION_COLUMNS):
            text += _LESION_NOTE
        bases = sorted({line.test.split()[-1] for line in self.lines if line.test[:1].isdigit()})
        text += self.like_for_like
        if self.reference is None:
            if any(line.n for line in self.lines):
                return text + " No significance test: the reference row has no completed trial."
            return text + " No significance test: no line has completed trials."
        title = metric_title(self.metric)
        over = " and ".join(_BASES[b] for b in bases)
        if not over:
            return (
                f"{text} p: n/a, no line shares two seeds or per-slice metrics with the "
                f"reference '{self.reference}'."
            )
        block = (
            " Fold is a block: each pair is the same seed on the same fold's test subjects, so "
            "differences between folds' subjects cancel."
            if "pairs" in bases
            else ""
        )
        return (
            f"{text} p: {_TEST_NAMES[self.paired_test]} of {title} against "
            f"'{self.reference}' over matched {over} (the 'test' column says which).{block}"
        )


#: Lesion columns (ablate.lesions): mean over the test lesions of each absolute error.
LESION_COLUMNS = tuple(
    Column(key, title, metric_names.better(key), fmt)
    for key, title, fmt in (
        ("lesion_abs_suvmax_bias", "SUVmax err %", ".1f"),
        ("lesion_abs_suvmean_bias", "SUVmean err %", ".1f"),
        ("lesion_abs_crc_error", "CRC err", ".3f"),
    )
)
_LESION_NOTE = (
    " Lesion columns: mean over the test lesions of |SUVmax bias| and |SUVmean bias| (%) and"
    " |1 - CRC| (contrast recovery against the full-dose reference; ablate/lesions.py)."
)


def metric_title(key: str) -> str:
    ams = key.startswith("ams_")
    base = key.removeprefix("ams_").removeprefix("paper_")
    return ("AMS " if ams else "") + _TITLES.get(base, base)


def table_columns(convention: Convention, nrmse: bool = False) -> list[Column]:
    """The columns of a table in one convention (NRMSE only for paper-000-style studies)."""
    prefix = "paper_" if convention == "paper" else ""
    quality = list(_QUALITY) + (["nrmse"] if nrmse and convention == "standard" else [])
    better = {q: metric_names.better(q) for q in quality}
    fmt = {"psnr": ".2f", "ssim": ".4f", "nmse": ".4f", "nrmse": ".4f"}
    cols = [Column(prefix + q, _TITLES[q], better[q], fmt[q], q) for q in quality]
    cols += [
        Column(f"ams_{prefix}{q}", f"AMS {_TITLES[q]}", better[q], fmt[q], f"ams_{q}")
        for q in _QUALITY
    ]
    return cols + [
        Column("sd", "SD", metric_names.better("sd"), ".2e", "sd"),
        *LESION_COLUMNS,
        Column("params_m", "MParam", metric_names.better("params_m"), "auto", "params_m", False),
        Column("gmacs", "GMACs", metric_names.better("gmacs"), "auto", "gflops", spread=False),
        Column("train_s", "Train (s)", metric_names.better("train_s"), ".1f"),
    ]


def _variant_params(df: pd.DataFrame) -> list[str]:
    """Params that take several values within one row (grid axes, searched knobs)."""
    out = []
    for col in df.columns:
        name = col.removeprefix("params.")
        if not col.startswith("params.") or name == "row":
            continue
        if name in _PARAM_NAMES_NOT_VARIANTS:
            continue
        # A param absent from some runs (logged by an older version) is not an axis.
        if (df.groupby("row")[col].nunique(dropna=True) > 1).any():
            out.append(col)
    return out


def _short(value: str) -> str:
    """A param value for a line name: floats to 4 significant digits, the rest as logged."""
    try:
        return f"{float(value):.4g}" if any(c in value for c in ".eE") else value
    except ValueError:
        return value


def _with_variants(df: pd.DataFrame) -> pd.DataFrame:
    keys = _variant_params(df)
    names = []
    for _, trial in df.iterrows():
        extra = [
            f"{k.removeprefix('params.')}={_short(trial[k])}" for k in keys if pd.notna(trial[k])
        ]
        names.append(f"{trial['row']} [{', '.join(extra)}]" if extra else trial["row"])
    return df.assign(line=names)


def _check_metrics(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A completed trial without the main metric counts as failed, with that reason."""
    df = df.copy()
    col = f"metrics.{metric}"
    values = df[col] if col in df else pd.Series(np.nan, index=df.index)
    missing = (df["status"] == "completed") & values.isna()
    df.loc[missing, "status"] = "failed"
    # trials now fail when a metric is undefined (ablate.training.evaluation); an older ablate
    # dropped it and called the trial completed
    df.loc[missing, "error"] = f"no metric '{metric}' (a trial of an older ablate: rerun it)"
    nonfinite = (df["status"] == "completed") & ~np.isfinite(values.astype(float))
    df.loc[nonfinite, "status"] = "failed"
    df.loc[nonfinite, "error"] = f"metric '{metric}' is not finite"
    return df


def _dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Keep the latest trial per line, seed and fold (a later launch supersedes an earlier
    one); the notes name each replaced trial's run and launch, and the run that replaced it."""
    ordered = df.sort_values("start_time", kind="stable", na_position="first")
    keep = ordered.drop_duplicates(["line", "seed", "fold"], keep="last")
    notes = []
    dropped = ordered[~ordered.index.isin(keep.index)]
    for (line, seed, fold), new in keep.groupby(["line", "seed", "fold"], sort=False, dropna=False):
        same_seed = dropped["seed"].isna() if pd.isna(seed) else dropped["seed"] == seed
        same_fold = dropped["fold"].isna() if pd.isna(fold) else dropped["fold"] == fold
        old = dropped[(dropped["line"] == line) & same_seed.fillna(False) & same_fold.fillna(False)]
        if len(old):
            where = f"seed {seed}" + ("" if pd.isna(fold) else f" fold {fold}")
            notes.append(f"{line} {where}: rerun {_trials_text(new)} replaces {_trials_text(old)}")
    return df.loc[df.index.isin(keep.index)], notes


def _mixed_code(df: pd.DataFrame) -> list[str]:
    """A note per line whose seeds ran on different code (git commits): its spread then
    mixes code changes with seed noise. Reruns of a seed replace it, so only seeds differ."""
    if "code_version" not in df:
        return []
    notes = []
    for line, trials in df.groupby("line", sort=False):
        commits = [c for c in dict.fromkeys(trials["code_version"]) if isinstance(c, str) and c]
        if len(commits) > 1:
            shown = ", ".join(c[:8] for c in commits)
            notes.append(f"{line}: its trials ran on {len(commits)} code versions ({shown})")
    return notes


def _trials_text(trials: pd.DataFrame) -> str:
    """``run 1a2b3c4d (launch demo-20260101-120000)``: which trials, for a note."""
    runs = ", ".join(str(r)[:8] for r in trials["run_id"])
    launches = [la for la in dict.fromkeys(trials.get("launch", [])) if isinstance(la, str) and la]
    where = f" (launch {', '.join(launches)})" if launches else ""
    return f"run{'s' if len(trials) > 1 else ''} {runs}{where}"


def _summarise(name: str, trials: pd.DataFrame, columns: list[Column]) -> tuple[Line, list[str]]:
    first = trials.iloc[0]
    label = first["label"] if isinstance(first["label"], str) and first["label"] else first["row"]
    if name != first["row"]:
        label = f"{label} {name.removeprefix(first['row']).strip()}"
    done = trials[trials["status"] == "completed"]
    line = Line(name=name, row=first["row"], label=label, n=len(done), total=len(trials))
    line.run_ids = done["run_id"].tolist()
    line.seeds = [int(s) if pd.notna(s) else None for s in done["seed"]]
    line.folds = [int(f) if pd.notna(f) else None for f in done["fold"]]
    line.trials = [
        (t["run_id"], int(t["seed"]) if pd.notna(t["seed"]) else None, t["status"])
        for _, t in trials.iterrows()
    ]
    for col in columns:
        key = f"metrics.{col.key}"
        if key not in done:
            continue
        vals = _per_seed(done, key) if done["fold"].notna().any() else done[key].dropna()
        vals = vals.to_numpy(dtype=float)
        if len(vals):
            mean = float(vals.mean())
            std = float(vals.std(ddof=1)) if len(vals) > 1 and col.spread else None
            # float noise of identical values (e.g. 3e-3 +- 5e-19) is no spread
            if std is not None and std <= 1e-9 * abs(mean):
                std = 0.0
            line.values[col.key] = (mean, std)
    notes = []
    for _, trial in trials[trials["status"] != "completed"].iterrows():
        why = f": {trial['error']}" if trial["status"] == "failed" and trial["error"] else ""
        fold = "" if pd.isna(trial["fold"]) else f" fold {trial['fold']}"
        notes.append(f"{name} seed {trial['seed']}{fold}: {trial['status']}{why}")
    if line.n == 0:
        statuses = set(trials["status"])
        line.status = "failed" if "failed" in statuses else sorted(statuses)[0]
        errors = [e for e in dict.fromkeys(trials["error"]) if isinstance(e, str) and e]
        line.reason = "; ".join(errors) if errors else f"all trials {line.status}"
    elif line.n < line.total:
        line.status = "partial"
    return line, notes


def _per_seed(done: pd.DataFrame, key: str) -> pd.Series:
    """A cross-validated line's value per seed: its folds' scores weighted by their test
    subjects (``test_subjects``), i.e. the mean over the subjects pooled across the folds."""
    weights = f"metrics.{TEST_SUBJECTS}"
    scored = done[done[key].notna()]
    w = scored[weights].fillna(1.0) if weights in scored else pd.Series(1.0, index=scored.index)
    total = (scored[key] * w).groupby(scored["seed"]).sum()
    return total / w.groupby(scored["seed"]).sum()


def _paired_p(a: np.ndarray, b: np.ndarray, test: PairedTest) -> float | None:
    if len(a) < 2 or np.allclose(a, b):
        return None
    p = stats.ttest_rel(a, b).pvalue if test == "t" else stats.wilcoxon(a, b).pvalue
    return float(p) if np.isfinite(p) else None


def _per_slice(frame: pd.DataFrame, metric: str) -> pd.Series | None:
    """A run set's per-slice metric averaged over runs, indexed by the slice identity columns."""
    if metric not in frame or frame.empty:
        return None
    keys = [
        c
        for c in frame.columns
        if c != "run_id" and not pd.api.types.is_float_dtype(frame[c]) and c != metric
    ]
    if not keys:
        frame = frame.assign(position=frame.groupby("run_id").cumcount())
        keys = ["position"]
    return frame.groupby(keys)[metric].mean()


def _significance(
    lines: list[Line],
    ref: Line,
    metric: str,
    df: pd.DataFrame,
    test: PairedTest,
    slices: SliceLoader | None,
) -> None:
    col = f"metrics.{metric}"
    by_run = df.set_index("run_id")[col] if col in df else pd.Series(dtype=float)
    # matched by (seed, fold): a cross-validated pair shares its seed and its test subjects
    by_seed = {
        ln.name: {
            (s, f): by_run[r]
            for s, f, r in zip(ln.seeds, ln.folds, ln.run_ids, strict=True)
            if s is not None
        }
        for ln in lines
    }
    need_slices = []
    for line in lines:
        if line is ref:
            line.test = "reference"
            continue
        matched = sorted(set(by_seed[line.name]) & set(by_seed[ref.name]))
        if len(matched) >= 2:
            a = np.array([by_seed[line.name][s] for s in matched])
            b = np.array([by_seed[ref.name][s] for s in matched])
            unit = "seeds" if all(f is None for _, f in matched) else "pairs"
            line.p_value, line.test = _paired_p(a, b, test), f"{len(matched)} {unit}"
        elif line.n:
            need_slices.append(line)
    if not need_slices or slices is None:
        return
    frame = slices(sorted({r for ln in need_slices + [ref] for r in ln.run_ids}))
    if frame.empty:
        return
    ref_slices = _per_slice(frame[frame["run_id"].isin(ref.run_ids)], metric)
    for line in need_slices:
        mine = _per_slice(frame[frame["run_id"].isin(line.run_ids)], metric)
        if mine is None or ref_slices is None:
            continue
        joined = pd.concat([mine.rename("a"), ref_slices.rename("b")], axis=1, join="inner")
        if len(joined) >= 2:
            line.p_value = _paired_p(joined["a"].to_numpy(), joined["b"].to_numpy(), test)
            line.test = f"{len(joined)} slices"


#: The label of the line that scores the low-dose input itself (trials' ``input_*`` metrics).
INPUT_LABEL = "low-dose input"


def _input_line(df: pd.DataFrame, columns: list[Column]) -> Line | None:
    """The "low-dose input" line: the LPET image scored against the reference on the same
    test subjects, as logged (``input_<metric>``) by the completed trials of rows that
    reconstruct from it; None when no trial has one (sinogram-only studies). The input does
    not depend on the seed: a spread appears only if trials scored different subjects."""
    done = df[df["status"] == "completed"]
    line = Line(name="input", row="input", label=INPUT_LABEL, kind="input")
    for col in columns:
        key = f"metrics.input_{col.key}"
        if col.paper_attr not in (*_QUALITY, "nrmse") or col.key.startswith("ams_"):
            continue
        if key not in done:
            continue
        vals = done[key].dropna().to_numpy(dtype=float)
        if len(vals):
            spread = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            line.values[col.key] = (float(vals.mean()), spread if spread > 1e-9 else None)
            line.n = line.total = max(line.n, len(vals))
    return line if line.values else None


def _paper_row(row: str) -> PaperRow | None:
    return TABLE2.get(row) or TABLE1.get(row)


def _paper_line(row: str, paper: PaperRow, columns: list[Column]) -> Line:
    line = Line(name=f"{row} (paper)", row=row, label=f"paper: {paper.label}", kind="paper")
    stds = {"psnr": paper.psnr_std, "ssim": paper.ssim_std}
    for col in columns:
        value = getattr(paper, col.paper_attr, None) if col.paper_attr else None
        if value is not None:
            line.values[col.key] = (float(value), stds.get(col.paper_attr))
    return line


def ablation_table(
    df: pd.DataFrame,
    *,
    convention: Convention = "standard",
    reference: str | None = None,
    paper: bool = False,
    metric: str = "psnr",
    paired_test: PairedTest = "t",
    slices: SliceLoader | None = None,
    title: str = "",
) -> AblationTable:
    """Build the ablation table of a results frame (see ``dashboards.results.load_results``).

    ``metric`` names the tested quality metric in the standard convention (``psnr``, ``ssim``,
    ``nmse``); the paper convention tests its ``paper_`` counterpart. ``reference`` is a row
    (or line) name; by default the first line with completed trials. ``slices`` loads the
    per-slice metrics of a list of run ids, for lines with fewer than two seeds matching the
    reference's; by default the ``test_metrics.parquet`` of runs whose artifacts are on this
    machine are read in place. ``title`` replaces "Ablation study '<experiment>'" in the
    caption.
    """
    if slices is None:
        from dashboards.results import load_slice_metrics

        def slices(run_ids: list[str]) -> pd.DataFrame:
            return load_slice_metrics(None, df[df["run_id"].isin(run_ids)])

    if df.empty:
        raise UserError("no trials to tabulate: the results are empty")
    if metric not in _QUALITY + ["nrmse"]:
        raise UserError(f"unknown table metric '{metric}': use one of psnr, ssim, nmse, nrmse")
    key = f"paper_{metric}" if convention == "paper" and metric in _QUALITY else metric
    experiment = str(df["experiment"].iloc[0])
    columns = table_columns(convention, nrmse=any(r in TABLE1 for r in df["row"]))
    datasets = set(df["dataset_sha256"].fillna("")) if "dataset_sha256" in df else {""}
    if len(datasets) > 1:
        raise UserError(
            "these trials trained on several datasets: tabulate one at a time "
            "(dashboards.results.dataset_trials; `ablate table NAME --data NAME`)"
        )
    # frames saved before folds existed: every trial on the dataset's own split
    df = df.assign(**{c: df[c] if c in df else pd.NA for c in ("fold", "fold_hash")})
    variants = [k.removeprefix("params.") for k in _variant_params(df)]
    df = _with_variants(_check_metrics(df, key))
    df, replaced = _dedupe(df)
    df = df.sort_values(["row_index", "seed"], kind="stable")

    lines, notes = [], []
    for name in dict.fromkeys(df["line"]):
        line, line_notes = _summarise(name, df[df["line"] == name], columns)
        lines.append(line)
        notes += line_notes
    notes += replaced
    notes += _mixed_code(df)

    ref = _reference(lines, reference, _declared_reference(df), notes)
    if ref is not None:
        _significance(lines, ref, key, df, paired_test, slices)
    better = {c.key: c.better for c in columns}
    for col in columns:
        scored = [ln for ln in lines if col.key in ln.values]
        if len(scored) > 1:
            pick = max if better[col.key] == "max" else min
            best = pick(ln.values[col.key][0] for ln in scored)
            for ln in scored:
                if math.isclose(ln.values[col.key][0], best, rel_tol=1e-9):
                    ln.best.add(col.key)

    baseline = _input_line(df, columns)
    if baseline is not None:
        lines.insert(0, baseline)
    if paper:
        lines = _with_paper_lines(lines, columns)
        notes.append(
            "paper lines: Han et al. 2023 Table 2 / PMDM-PET Table 1, as published (paper's own "
            "metric convention, paper-scale models; GMACs are the paper's 'BFLOPs')"
        )
    shown = {c.key for ln in lines for c in columns if c.key in ln.values}
    keep = [c for c in columns if c.key in shown or c.paper_attr in _QUALITY]
    return AblationTable(
        experiment=experiment,
        convention=convention,
        metric=key,
        reference=ref.name if ref else None,
        paired_test=paired_test,
        columns=keep,
        lines=lines,
        notes=notes,
        title=title,
        dataset=_dataset_of(df),
        folds=_fold_count(df),
        fold_hash=_fold_hash(df),
        like_for_like=confounds.of_results(df, ref.name, variants).caption() if ref else "",
    )


def _fold_count(df: pd.DataFrame) -> int:
    """k of a cross-validated study (its trials' ``data.folds``); 0 without folds."""
    if not df["fold"].notna().any() or "params.data.folds" not in df:
        return 0
    return int(pd.to_numeric(df["params.data.folds"], errors="coerce").max())


def _fold_hash(df: pd.DataFrame) -> str:
    """The trials' fold hash; several (folds dealt differently) cannot share a table."""
    hashes = set(df["fold_hash"].dropna()) - {""}
    if len(hashes) > 1:
        raise UserError(
            f"these trials were tested on differently dealt folds ({', '.join(sorted(hashes))}): "
            "tabulate one launch, or rerun with the same data.folds/fold_seed/stratify"
        )
    return next(iter(hashes), "")


def _dataset_of(df: pd.DataFrame) -> tuple[str, str]:
    if "dataset" not in df or df.empty:
        return "", ""
    first = df.iloc[0]
    name, sha = first["dataset"], first["dataset_sha256"]
    return (name, sha) if isinstance(name, str) and isinstance(sha, str) else ("", "")


def _declared_reference(df: pd.DataFrame) -> str | None:
    """The reference row the YAML declares (``reference:``, default its first row), as the
    latest launch of these trials recorded it; None for launches made before it was."""
    if "reference" not in df:
        return None
    declared = df.sort_values("start_time", kind="stable")["reference"].dropna()
    return str(declared.iloc[-1]) if len(declared) else None


def _reference(
    lines: list[Line], reference: str | None, declared: str | None, notes: list[str]
) -> Line | None:
    """The reference line: ``--reference``, else the YAML's declared row, else (launches made
    before the YAML's was recorded) the first line with completed trials. A declared row
    this table does not hold (a launch of other ``--rows``) falls back to the first line, and
    a note says so; one without completed trials means no test."""
    if reference is None and declared is not None:
        found = next((ln for ln in lines if declared in (ln.name, ln.row)), None)
        if found is not None:
            if not found.n:
                notes.append(f"reference '{declared}' has no completed trial: no paired test")
            return found if found.n else None
        first = next((ln for ln in lines if ln.n), None)
        if first is not None:
            notes.append(
                f"the YAML's reference row '{declared}' is not in this table: tested against "
                f"'{first.name}' (the first row); pick another with --reference"
            )
        return first
    if reference is None:
        return next((ln for ln in lines if ln.n), None)
    for ln in lines:
        if reference in (ln.name, ln.row):
            return ln
    names = ", ".join(dict.fromkeys(ln.row for ln in lines))
    raise UserError(f"--reference '{reference}' is not a row of this study (rows: {names})")


def _with_paper_lines(lines: list[Line], columns: list[Column]) -> list[Line]:
    out: list[Line] = []
    for i, line in enumerate(lines):
        out.append(line)
        last_of_row = i + 1 == len(lines) or lines[i + 1].row != line.row
        found = _paper_row(line.row)
        if last_of_row and found is not None:
            out.append(_paper_line(line.row, found, columns))
    return out


def table_for(
    source: str,
    tracking_uri: str,
    parent_run_id: str | None = None,
    data: str | None = None,
    **options: object,
) -> AblationTable:
    """:func:`ablation_table` of an experiment (or a results ``.parquet``) in a tracking store;
    with ``parent_run_id``, of that one launch only; of the dataset ``data`` names, by default
    the study's first (:func:`dashboards.results.dataset_trials`)."""
    from dashboards.results import dataset_trials, load_slice_metrics, read_results

    df = read_results(source, tracking_uri)
    if parent_run_id is not None:
        df = df[df["parent_run_id"] == parent_run_id]
    one = dataset_trials(df, data, source)
    df = one.trials

    def slices(run_ids: list[str]) -> pd.DataFrame:
        return load_slice_metrics(tracking_uri, df[df["run_id"].isin(run_ids)])

    table = ablation_table(df, slices=slices, **options)
    table.other_datasets = one.others
    return table


# --- rendering -------------------------------------------------------------------------------


def _p_text(line: Line) -> str:
    if line.test == "reference":
        return "ref"
    if line.p_value is None:
        return "n/a" if line.kind == "measured" and line.n else ""
    return f"{line.p_value:.1e}" if line.p_value < 1e-3 else f"{line.p_value:.3f}"


def _value_text(line: Line, col: Column) -> str:
    if col.key not in line.values:
        return "–"
    mean, std = line.values[col.key]
    spread = "" if std is None else f" ± {col.format(std) if std else '0'}"
    return col.format(mean) + spread


def _n_text(line: Line) -> str:
    return f"{line.n}/{line.total}" if line.kind == "measured" else ""


def _header(columns: list[Column]) -> list[str]:
    arrows = {"max": "↑", "min": "↓"}
    return ["Row", "n"] + [f"{c.title} {arrows[c.better]}" for c in columns] + ["p", "test"]


def _grid_line(line: Line, columns: list[Column]) -> GridLine:
    values = [Cell(_value_text(line, c), strong=c.key in line.best) for c in columns]
    cells = [Cell(line.label), Cell(_n_text(line)), *values]
    cells += [Cell(_p_text(line)), Cell(line.test)]
    paper = line.kind == "paper"
    message = None
    if line.kind == "measured" and line.n == 0:
        message = f"{line.status}: {line.reason}"
    return GridLine(
        cells,
        css="paper" if paper else "failed" if line.status == "failed" else "",
        style="dim italic" if paper else "red" if line.n == 0 else None,
        italic=paper,
        message=message,
        # the notes below the table hold the full reason
        short_message=f"{line.status} (see below)" if message and len(message) > 24 else None,
    )


def grid(table: AblationTable) -> Grid:
    """The table's cells for :mod:`dashboards.render`."""
    header = _header(table.columns)
    return Grid(
        caption=table.caption,
        label=f"ablation-{table.experiment}",
        header=header,
        align=["l"] + ["r"] * (len(header) - 2) + ["l"],
        lines=[_grid_line(line, table.columns) for line in table.lines],
        notes=table.notes,
    )


def _csv(table: AblationTable) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    metric_cols = [f"{c.key}_{part}" for c in table.columns for part in ("mean", "std")]
    writer.writerow(
        ["line", "row", "label", "source", "status", "n", "total", *metric_cols]
        + ["p_value", "test", "reason"]
    )
    for line in table.lines:
        values = []
        for col in table.columns:
            mean, std = line.values.get(col.key, (None, None))
            values += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
        p = "" if line.p_value is None else repr(line.p_value)
        writer.writerow(
            [line.name, line.row, line.label, line.kind, line.status, line.n, line.total]
            + values
            + [p, line.test, line.reason]
        )
    return buf.getvalue()


def render(table: AblationTable, fmt: Format) -> str:
    """The table as text in one of the file formats."""
    return render_as(table, fmt, grid, _csv)


def to_rich(table: AblationTable) -> RichTable:
    """The table for the terminal: best values bold green, paper lines dim, failures red."""
    return grid_to_rich(grid(table))


def print_table(table: AblationTable, console: Console | None = None) -> None:
    """Print the terminal table (200 columns wide in a pipe or CI log)."""
    wide_console(console).print(to_rich(table))
