"""PET-BIDS trees as import sources: ``ablate data import BIDS_ROOT --full acq-std --low acq-low``.

A PET-BIDS dataset stores each scan as ``sub-<label>[/ses-<label>]/pet/*_pet.nii[.gz]`` with a
``_pet.json`` sidecar beside it (units, dose, weight, times: what ``--units suv`` reads).
pybids (imported only here: it is slow to import) reads the tree. The full-dose and low-dose
scans of a session differ by one entity, given as ``KEY-VALUE`` (``acq-std``, ``rec-lowdose``,
...); every other entity (subject, session, run...) pairs them. The dataset's subject ids are
the BIDS subject labels, with ``_ses-<label>`` (and other entities) appended when a subject
has several sessions; the split is drawn per BIDS subject, so two sessions of one person are
never on both sides of it. Sidecars are read from beside the image (BIDS inheritance from
higher folders is not followed).
"""

from __future__ import annotations

from pathlib import Path

from ablate.errors import UserError

#: BIDS entity keys (as in file names) -> pybids entity names.
ENTITIES = {
    "acq": "acquisition",
    "rec": "reconstruction",
    "trc": "tracer",
    "ses": "session",
    "task": "task",
    "run": "run",
}
_NOT_PAIRING = {"suffix", "extension", "datatype"}


def is_bids(folder: Path) -> bool:
    """A BIDS root holds ``dataset_description.json``."""
    return (Path(folder) / "dataset_description.json").is_file()


def _entity(option: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("-")
    if not sep or not value or key not in ENTITIES:
        raise UserError(
            f"{option} '{text}': give one BIDS entity as KEY-VALUE, e.g. acq-std "
            f"(keys: {', '.join(ENTITIES)})"
        )
    return ENTITIES[key], value


def pairs_from_bids(root: Path, full: str, low: str | None) -> list:
    """The pairs of a PET-BIDS tree, full dose told from low dose by ``full`` / ``low``."""
    from bids import BIDSLayout

    from ablate.data.importing import Pair

    root = Path(root)
    images = BIDSLayout(root, validate=False).get(suffix="pet", extension=[".nii.gz", ".nii"])
    if not images:
        raise UserError(f"{root}: no sub-*/[ses-*/]pet/*_pet.nii[.gz] images in this BIDS tree")
    entities = [image.get_entities() for image in images]
    wanted = {"spet": _entity("--full", full)}
    if low is not None:
        wanted["lpet"] = _entity("--low", low)
    for option, (name, value) in zip(("--full", "--low"), wanted.values(), strict=False):
        have = sorted({str(e[name]) for e in entities if name in e})
        if value not in have:
            key = next(k for k, v in ENTITIES.items() if v == name)
            raise UserError(
                f"{option} {key}-{value}: no PET image of {root} has {name} '{value}' "
                f"(the tree has: {', '.join(have) or 'no ' + name + ' entity'})"
            )
    found: dict[tuple, dict[str, Path]] = {}
    labels: dict[tuple, dict[str, str]] = {}
    for image, ent in zip(images, entities, strict=True):
        kind = next((k for k, (n, v) in wanted.items() if str(ent.get(n)) == v), None)
        if kind is None:
            continue
        rest = {
            k: str(v)
            for k, v in ent.items()
            if k not in _NOT_PAIRING and k not in {n for n, _ in wanted.values()}
        }
        key = tuple(sorted(rest.items()))
        files = found.setdefault(key, {})
        if kind in files:
            raise UserError(f"{image.path}: a second {kind} image for {_describe(rest)}")
        files[kind] = Path(image.path)
        labels[key] = rest
    sessions: dict[str, int] = {}
    for rest in labels.values():
        sessions[rest["subject"]] = sessions.get(rest["subject"], 0) + 1
    pairs = []
    for key, files in found.items():
        rest = labels[key]
        if "spet" not in files:
            raise UserError(f"{_describe(rest)} in {root} has no full-dose image ({full})")
        if low is not None and "lpet" not in files:
            raise UserError(f"{_describe(rest)} in {root} has no low-dose image ({low})")
        name = rest["subject"]
        if sessions[name] > 1:
            short = {v: k for k, v in ENTITIES.items()}
            extra = [f"{short.get(k, k)}-{v}" for k, v in sorted(rest.items()) if k != "subject"]
            name = "_".join([name, *extra])
        pairs.append(Pair(name, files["spet"], files.get("lpet"), group=rest["subject"]))
    return sorted(pairs, key=lambda p: p.subject)


def _describe(rest: dict[str, str]) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(rest.items()))
