"""Ablation designs generated from the full row's switches (the YAML's ``design:`` key).

Table 2 of paper 003 is an *additive* design: each row adds one switch to the one before, so
"+NAS" is only ever measured with IRM on and spectrum off, and a component's effect is
confounded with the order of the additions. A researcher who asks what each switch does on
its own, and whether switches interact, writes::

    design: {full: full, factors: [irm, nas, spectrum, contrastive], kind: factorial}

and the rows are generated from the full row (``rows.full``), every other setting copied:

- ``additive``: the switches added in the listed order (``base``, ``irm``, ``irm_nas``, ...);
- ``leave_one_out``: the full row and the full row without each factor (``full-nas``);
- ``factorial``: every on/off combination (2^k);
- ``fractional``: the smallest regular 2^(k-p) fraction that reaches ``resolution:`` (pyDOE3's
  ``fracfact_opt``, which minimises the aliasing of low-order interactions; its
  ``fracfact_by_res`` misses the 8-run resolution-IV design of 4 factors, pydoe/pydoe#153).

Rows are named by the factors they switch on, joined by ``_`` (``irm_spectrum``; ``base``
when none), leave-one-out rows ``<full>-<factor>``: a name lands in MLflow metric keys, which
allow no ``+``. A generated row identical to a row of the YAML (its label aside) *is* that row
(``cpm``, ``full``): it is neither trained twice nor renamed.

**Switches that need another** (``contrastive`` needs ``irm``: a row type's ``NEEDS``): in a
generated combination, a switch whose prerequisite is off is switched off too, and the row's
label says so. A combination that this turns into one the design already has is dropped, with
one line naming the row it would repeat: the factorial of the demo's four switches has 12 rows
(the 4 with ``contrastive`` on and ``irm`` off repeat those with both off); leave-one-out keeps
5 (``full-irm`` has ``contrastive`` off too); a resolution-IV fraction keeps its 8 runs, two
with ``contrastive`` off, which the effects analysis reports as terms it cannot separate. A
combination the method refuses for another reason is dropped with the method's reason.

Nothing here imports the config module (it imports this one); a row is any pydantic row model.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ValidationError

Kind = Literal["additive", "leave_one_out", "factorial", "fractional"]
KINDS: tuple[Kind, ...] = ("additive", "leave_one_out", "factorial", "fractional")
#: The resolution ``ablate plan --compare-designs`` gives a fraction the YAML has no
#: resolution for: IV keeps main effects clear of two-factor interactions.
DEFAULT_RESOLUTION = 4
#: The name of the point with every factor off (unless a YAML row is that point).
BASE = "base"
ROMAN = {3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII"}


class DesignError(ValueError):
    """A design that cannot be generated, as one line naming the key and the fix."""


class Spec(Protocol):
    """The ``design:`` section (``ablate.config.DesignConfig``)."""

    full: str
    factors: list[str]
    kind: Kind
    resolution: int | None


@dataclass(frozen=True)
class Point:
    """One row of a design: its factor levels (after switches that need another are off),
    the row it runs and whether the design made it (False: a row of the YAML is it)."""

    name: str
    levels: dict[str, bool]
    row: BaseModel
    generated: bool
    note: str = ""


@dataclass(frozen=True)
class Design:
    """A design's rows in its order (``points``), what it left out and, for a fraction, the
    structure the analysis reports beside its effects."""

    kind: Kind
    full: str
    factors: list[str]
    points: list[Point]
    #: One line per combination left out, with the reason.
    dropped: list[str] = field(default_factory=list)
    #: A fraction's generator and alias structure (pyDOE3), in factor names.
    resolution: int | None = None
    erased: int = 0
    generator: str | None = None
    aliases: list[str] = field(default_factory=list)

    @property
    def rows(self) -> list[str]:
        return [p.name for p in self.points]

    def levels(self) -> dict[str, dict[str, bool]]:
        """Row -> factor -> on, what the effects analysis fits."""
        return {p.name: dict(p.levels) for p in self.points}

    def lines(self, launched: Collection[str] | None = None) -> list[str]:
        """What ``ablate plan`` prints about the design; rows not in ``launched`` (``--rows``
        left them out) are marked."""
        what = self.kind.replace("_", "-")
        if self.kind == "fractional":
            what += f" 2^({len(self.factors)}-{self.erased}) resolution {ROMAN[self.resolution]}"
        made = sum(p.generated for p in self.points)
        out = [
            f"design: {what} over {', '.join(self.factors)} from row '{self.full}': "
            f"{len(self.points)} rows ({made} generated, {len(self.points) - made} of the YAML)"
            + (f", {len(self.dropped)} combination(s) dropped" if self.dropped else "")
        ]
        width = max(len(p.name) for p in self.points)
        for p in self.points:
            signs = " ".join(("+" if p.levels[f] else "-") + f for f in self.factors)
            source = "" if p.generated else "  (row of the YAML)"
            if launched is not None and p.name not in launched:
                source += "  (not launched: --rows)"
            note = f"  [{p.note}]" if p.note else ""
            out.append(f"  {p.name:<{width}}  {signs}{note}{source}")
        out += [f"  dropped: {line}" for line in self.dropped]
        if self.generator:
            out.append(f"  generator (pyDOE3): {self.generator}; aliases:")
            out += [f"    {line}" for line in self.aliases]
        return out


def switches(row_type: type[BaseModel]) -> list[str]:
    """The boolean switches of a row type: what a design can turn on and off."""
    return [name for name, f in row_type.model_fields.items() if f.annotation is bool]


def _needs(row_type: type[BaseModel]) -> Mapping[str, Sequence[str]]:
    return getattr(row_type, "NEEDS", {})


def _buildable(assignment: dict[str, bool], needs: Mapping[str, Sequence[str]]) -> list[str]:
    """Switch off (in place) every switch whose prerequisite is off; the notes of what was."""
    notes = []
    changed = True
    while changed:
        changed = False
        for switch, required in needs.items():
            missing = [r for r in required if not assignment.get(r, False)]
            if assignment.get(switch) and missing:
                assignment[switch] = False
                notes.append(f"{switch} off (needs {', '.join(missing)})")
                changed = True
    return notes


def _fraction(n: int, resolution: int) -> tuple[np.ndarray, int, str, list[str]]:
    """The smallest regular fraction of ``n`` two-level factors with at least ``resolution``
    (``-1``/``+1`` matrix), its p, generator and alias map, in pyDOE3's letters."""
    from pyDOE3 import fracfact, fracfact_opt

    for erased in range(n - 1, 0, -1):
        try:
            generator, aliases, _ = fracfact_opt(n, erased)
        except ValueError:  # pyDOE3 refuses saturated fractions: try a larger one
            continue
        matrix = fracfact(generator)
        if _resolution(matrix) >= resolution:
            return matrix, erased, generator, aliases
    raise DesignError(
        f"design.resolution: no fraction of {n} factors reaches resolution {resolution}; "
        "the full factorial is the smallest design: use kind: factorial"
    )


def _resolution(matrix: np.ndarray) -> int:
    """The length of the shortest word of the defining relation (a product of columns that
    is constant over the runs); a full factorial has none (a large number)."""
    n = matrix.shape[1]
    for size in range(1, n + 1):
        for combo in itertools.combinations(range(n), size):
            if abs(matrix[:, combo].prod(axis=1).sum()) == len(matrix):
                return size
    return n + 1


def _in_names(text: str, factors: Sequence[str]) -> str:
    """pyDOE3's letters (``ab = cd``) as factor names (``irm:nas = spectrum:contrastive``)."""
    words = []
    for word in text.split():
        if word.isalpha():
            word = ":".join(factors[ord(c) - ord("a")] for c in word)
        words.append(word)
    return " ".join(words)


def _combinations(spec: Spec) -> tuple[list[dict[str, bool]], dict[str, Any]]:
    """The factor levels the design asks for, in its order, and a fraction's details."""
    factors = list(spec.factors)
    n = len(factors)
    if spec.kind == "additive":
        return [{f: i < k for i, f in enumerate(factors)} for k in range(n + 1)], {}
    if spec.kind == "leave_one_out":
        everything = dict.fromkeys(factors, True)
        return [everything] + [{**everything, f: False} for f in factors], {}
    extra: dict[str, Any] = {}
    if spec.kind == "factorial":
        grid = itertools.product([False, True], repeat=n)
        combos = [dict(zip(factors, c, strict=True)) for c in grid]
    else:
        matrix, erased, generator, aliases = _fraction(n, spec.resolution or DEFAULT_RESOLUTION)
        combos = [dict(zip(factors, (v > 0 for v in run), strict=True)) for run in matrix]
        extra = {
            "resolution": _resolution(matrix),
            "erased": erased,
            "generator": _in_names(generator, factors),
            "aliases": [_in_names(a, factors) for a in aliases if "=" in a],
        }
    order = lambda c: (sum(c.values()), [not c[f] for f in factors])  # noqa: E731
    return sorted(combos, key=order), extra


def _name(spec: Spec, wanted: dict[str, bool], levels: dict[str, bool]) -> str:
    """A leave-one-out row by the factor it leaves out (what was asked), any other by the
    factors it has on (what was built)."""
    left_out = [f for f in spec.factors if not wanted[f]]
    if spec.kind == "leave_one_out" and left_out:
        return f"{spec.full}-{left_out[0]}"
    on = [f for f in spec.factors if levels[f]]
    return "_".join(on) if on else BASE


def _label(spec: Spec, wanted: dict[str, bool], levels: dict[str, bool], notes: list[str]) -> str:
    left_out = [f for f in spec.factors if not wanted[f]]
    if spec.kind == "leave_one_out":
        text = f"{spec.full} without {left_out[0]}" if left_out else spec.full
    else:
        text = " ".join(("+" if levels[f] else "−") + f for f in spec.factors)
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _same(a: BaseModel, b: BaseModel) -> bool:
    """The same row, its label aside."""
    return type(a) is type(b) and a.model_dump(exclude={"label"}) == b.model_dump(exclude={"label"})


def generate(spec: Spec, rows: Mapping[str, BaseModel]) -> Design:
    """The design's rows from the full row ``rows[spec.full]`` (module docstring: names,
    switches that need another, rows of the YAML that are points of the design).

    Raises:
        DesignError: a full row that is not a row, a factor that is not a boolean switch of
            its method or is off in it, a resolution no fraction reaches, a generated name
            that is a different row of the YAML.
    """
    if spec.full not in rows:
        raise DesignError(f"design.full: no row '{spec.full}' (rows: {', '.join(rows)})")
    full = rows[spec.full]
    row_type = type(full)
    method = getattr(full, "method", row_type.__name__)
    valid = switches(row_type)
    for factor in spec.factors:
        if factor not in valid:
            have = ", ".join(valid) or "none"
            raise DesignError(
                f"design.factors: '{factor}' is not a switch of method '{method}' (row "
                f"'{spec.full}'); its switches: {have}"
            )
        if not getattr(full, factor):
            raise DesignError(
                f"design.factors: '{factor}' is off in the full row '{spec.full}': a design "
                f"switches off what the full row has; set {factor}: true or drop the factor"
            )
    combos, extra = _combinations(spec)
    base = full.model_dump(mode="json")
    points: list[Point] = []
    dropped: list[str] = []
    seen: dict[tuple[bool, ...], str] = {}
    for wanted in combos:
        assignment = {s: bool(getattr(full, s)) for s in valid} | wanted
        notes = _buildable(assignment, _needs(row_type))
        levels = {f: assignment[f] for f in spec.factors}
        asked = " ".join(("+" if wanted[f] else "-") + f for f in spec.factors)
        key = tuple(assignment[s] for s in valid)
        if key in seen:
            dropped.append(f"{asked}: {'; '.join(notes)}, the same as row '{seen[key]}'")
            continue
        try:
            row = row_type.model_validate({**base, **assignment, "label": None})
        except ValidationError as err:
            reason = err.errors()[0]["msg"].removeprefix("Value error, ")
            dropped.append(f"{asked}: method '{method}' refuses it ({reason})")
            continue
        name = _name(spec, wanted, levels)
        same = next((n for n, r in rows.items() if _same(r, row)), None)
        if same is None and name in rows:
            raise DesignError(
                f"design: the generated row '{name}' ({asked}) is another row of the YAML "
                f"with that name: rename rows.{name}"
            )
        label = _label(spec, wanted, levels, notes)
        # a row of the YAML with the design's own name and label is one it generated before
        generated = same is None or (same == name and getattr(rows[same], "label", None) == label)
        if same is None:
            row = row.model_copy(update={"label": label})
        seen[key] = same or name
        note = "; ".join(notes)
        points.append(Point(same or name, levels, rows.get(same, row), generated, note))
    return Design(spec.kind, spec.full, list(spec.factors), points, dropped, **extra)
