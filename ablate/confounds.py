"""What the rows of an ablation table differ in besides their row switches.

An ablation contrast measures one switch only when everything else is equal. Rows of
different method families read their diffusion knobs from different sections
(``diffusion.sr3.prediction`` for SR3, ``diffusion.irm.prediction`` for the IRM rows), and a
row may override a shared setting (``rows.<name>.lr``). So two rows can differ in a setting
that no row switch names: SR3 on v-prediction against the IRM rows on eps, say. A contrast
between such rows confounds the component with that setting.

This module is the one owner of that comparison. It reads a row's settings as the flat dotted
mapping MLflow logs (``row.method``, ``diffusion.irm.prediction``...; values or their text),
so the launch plan (from the trials it would run) and the table (from the params of the
trials it shows) decide alike. A setting counts only where both rows of a contrast read it:
a CPM-only row has no prediction, so it differs from SR3 in its method, not in a knob.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ablate.config import ExperimentConfig, flatten

Flat = Mapping[str, Any]

#: The diffusion family whose section a row's knobs live in (``diffusion.<family>.*``).
_FAMILY = {"sr3": "sr3", "pmdm": "pmdm", "palette": "pmdm"}
#: The training schedule's length each family reads.
_STEPS_KEY = {"sr3": "diffusion.train_steps", "irm": "diffusion.train_steps"}
_STEPS_KEY["pmdm"] = "diffusion.pmdm.train_steps"
#: Shared settings every row reads that change what a trial measures (not how fast it runs).
_SHARED = (
    "train.steps",
    "train.batch_size",
    "train.ema_decay",
    "train.precision",
    "train.eval_slices",
)


def _text(value: Any) -> str | None:
    """A setting's value as MLflow logs it (``str``), None when the row does not have it."""
    return None if value is None else str(value)


def _family(flat: Flat) -> str | None:
    method = _text(flat.get("row.method"))
    if method == "coarse_to_fine":
        return "irm" if _text(flat.get("row.irm")) == "True" else None
    return _FAMILY.get(method or "")


def _knob(name: str) -> Callable[[Flat], str | None]:
    def read(flat: Flat) -> str | None:
        family = _family(flat)
        return None if family is None else _text(flat.get(f"diffusion.{family}.{name}"))

    return read


def _row_or_train(name: str) -> Callable[[Flat], str | None]:
    def read(flat: Flat) -> str | None:
        own = flat.get(f"row.{name}")
        return _text(flat.get(f"train.{name}") if own in (None, "None") else own)

    return read


def _sampler(flat: Flat) -> str | None:
    family = _family(flat)
    if family is None:
        return None
    return "ddpm" if family == "irm" else _text(flat.get("diffusion.sampler"))  # IRM: DDPM


def _diffusion_steps(flat: Flat) -> str | None:
    family = _family(flat)
    return None if family is None else _text(flat.get(_STEPS_KEY[family]))


#: Setting name -> how a row's flat settings give its value (None: the row does not read it).
SETTINGS: dict[str, Callable[[Flat], str | None]] = {
    "prediction": _knob("prediction"),
    "schedule": _knob("schedule"),
    "min_snr": _knob("min_snr"),
    "diffusion steps T": _diffusion_steps,
    "sampler": _sampler,
    "lr": _row_or_train("lr"),
    "weight_decay": _row_or_train("weight_decay"),
    **{key: (lambda flat, key=key: _text(flat.get(key))) for key in _SHARED},
}


def row_settings(flat: Flat, ignore: Iterable[str] = ()) -> dict[str, str]:
    """The comparable settings a row reads, by :data:`SETTINGS` name, plus every ``data.*``
    key (the dataset), except the dotted keys in ``ignore`` (a table's grid axes, which
    its line names show)."""
    skip = set(ignore)
    flat = {key: value for key, value in flat.items() if key not in skip}
    out = {}
    for name, read in SETTINGS.items():
        value = read(flat)
        if value is not None:
            out[name] = value
    for key, value in flat.items():
        if key.startswith("data.") and key not in skip and value is not None:
            out[key] = str(value)
    return out


@dataclass(frozen=True)
class Confound:
    """A contrast ``row`` vs ``reference`` whose rows also differ in ``settings``:
    ``(name, value in row, value in reference)`` each."""

    row: str
    reference: str
    settings: tuple[tuple[str, str, str], ...]

    def message(self, labels: Mapping[str, str] | None = None) -> str:
        """``(f) vs (a): rows also differ in prediction (eps vs v), schedule (...)``."""
        names = labels or {}
        what = ", ".join(f"{name} ({mine} vs {theirs})" for name, mine, theirs in self.settings)
        row, ref = names.get(self.row, self.row), names.get(self.reference, self.reference)
        return f"{row} vs {ref}: rows also differ in {what}"


def differing(rows: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """The settings in which the rows that read them take more than one value:
    ``{setting: {row: value}}`` (rows not reading a setting left out)."""
    names = dict.fromkeys(name for settings in rows.values() for name in settings)
    out = {}
    for name in names:
        values = {row: s[name] for row, s in rows.items() if name in s}
        if len(set(values.values())) > 1:
            out[name] = values
    return out


def confounds(
    rows: Mapping[str, Mapping[str, str]], contrasts: Iterable[tuple[str, str]]
) -> list[Confound]:
    """The contrasts ``(row, reference)`` whose rows differ in a setting both read."""
    out = []
    for row, ref in contrasts:
        mine, theirs = rows[row], rows[ref]
        settings = tuple(
            (name, mine[name], theirs[name])
            for name in mine
            if name in theirs and mine[name] != theirs[name]
        )
        if settings:
            out.append(Confound(row, ref, settings))
    return out


def short_label(row: str, label: str | None) -> str:
    """A row's name in a message: its label's ``(x)`` tag (paper 003's row letters) when it
    has one, else the row's name."""
    if label and label.startswith("(") and ")" in label:
        return label[: label.index(")") + 1]
    return row


def describe(values: Mapping[str, str], labels: Mapping[str, str]) -> str:
    """``v in (a); eps in (c), (d), (e), (f)``: one differing setting's values by row."""
    by_value: dict[str, list[str]] = {}
    for row, value in values.items():
        by_value.setdefault(value, []).append(labels.get(row, row))
    return "; ".join(f"{value} in {', '.join(rows)}" for value, rows in by_value.items())


@dataclass(frozen=True)
class LikeForLike:
    """What a launch's rows differ in beyond their switches, and the contrasts it
    confounds (each row against the reference, the table's first row by default)."""

    differing: dict[str, dict[str, str]]
    confounds: list[Confound]
    labels: dict[str, str]

    def lines(self) -> list[str]:
        """One line per differing setting, then one warning per confounded contrast."""
        out = [
            f"rows differ beyond their switches in {name}: {describe(values, self.labels)}"
            for name, values in self.differing.items()
        ]
        return out + [f"warning: {c.message(self.labels)}" for c in self.confounds]

    def caption(self) -> str:
        """The sentences a table's caption adds (empty when its rows compare like for like)."""
        if not self.differing:
            return ""
        what = "; ".join(
            f"{name} ({describe(values, self.labels)})" for name, values in self.differing.items()
        )
        text = f" Rows differ beyond their switches in {what}."
        if self.confounds:
            text += " Warning: " + "; ".join(c.message(self.labels) for c in self.confounds) + "."
        return text


def of_experiment(exp: ExperimentConfig) -> LikeForLike:
    """:class:`LikeForLike` of the rows of ``exp`` (at its first seed, grid axes at their
    base values: a grid axis applies to every row alike), each against the declared
    reference row (the first row launched, when ``--rows`` left the reference out)."""
    from ablate.trials import row_trials

    trials = row_trials(exp)
    settings = {
        name: row_settings(flatten(trial.model_dump(mode="json"))) for name, trial in trials.items()
    }
    ref = exp.reference_row if exp.reference_row in exp.rows else next(iter(exp.rows))
    labels = {name: short_label(name, row.label) for name, row in exp.rows.items()}
    contrasts = [(name, ref) for name in exp.rows if name != ref]
    return LikeForLike(differing(settings), confounds(settings, contrasts), labels)


def of_results(df: Any, reference: str, ignore: Iterable[str] = ()) -> LikeForLike:
    """:class:`LikeForLike` of a table's lines: ``df`` is a results frame with its ``line``
    column (``dashboards.tables``); a line's settings are its first trial's ``params.*``,
    less the dotted keys in ``ignore`` (the grid axes its name shows). Every line is
    contrasted with the ``reference`` line, as the table's tests are."""
    settings: dict[str, dict[str, str]] = {}
    labels: dict[str, str] = {}
    for line, trials in df.groupby("line", sort=False):
        first = trials.iloc[0]
        flat = {
            str(col).removeprefix("params."): value
            for col, value in first.items()
            if str(col).startswith("params.") and isinstance(value, str)
        }
        settings[line] = row_settings(flat, ignore)
        label = first.get("label")
        labels[line] = short_label(line, label if isinstance(label, str) else None)
        if line != first.get("row"):
            labels[line] = line  # a grid variant: its name says which
    contrasts = [(line, reference) for line in settings if line != reference]
    return LikeForLike(differing(settings), confounds(settings, contrasts), labels)
