"""Subject-level k-fold cross-validation: which subjects each fold tests, frozen per dataset.

``data.folds: k`` deals a dataset's subjects into k folds (seeded by ``data.fold_seed``,
stratified by the subject column ``data.stratify`` when one is named). Trial ``(row, seed,
fold)`` tests on fold ``fold``'s subjects and trains on the others; its validation subjects
(pruning, checkpoint choice, search objectives) are drawn from those training subjects only,
never from the test fold, so nothing that picks a model has seen the subjects it is scored on.

The assignment is frozen: the first launch writes it beside the dataset
(``<dataset>/folds/<k>-seed<seed>-<stratify>.json``, with a hash of its content), and every
later launch, row and trial reads that file instead of dealing again, so every row of every
launch uses the same folds. Each trial run carries the hash (tag :data:`TAG_FOLD_HASH`), and
a trial whose node computes another hash stops instead of testing on other subjects.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.config import DataConfig
from ablate.data.format import read_manifest
from ablate.errors import UserError

#: The share of a fold's training subjects held out for validation (at least one subject).
VAL_FRACTION = 0.2
FOLDS_DIR = "folds"


@dataclass(frozen=True)
class Folds:
    """A frozen k-fold assignment of a dataset's subjects.

    ``test[f]`` are the subjects fold ``f`` tests; ``val[f]`` the validation subjects drawn
    from the other folds' subjects; every subject is in exactly one ``test[f]``."""

    k: int
    seed: int
    stratify: str | None
    test: dict[int, list[str]]
    val: dict[int, list[str]]

    @property
    def hash(self) -> str:
        """A short SHA-256 of the assignment: equal hashes, equal folds."""
        return hashlib.sha256(json.dumps(self.content(), sort_keys=True).encode()).hexdigest()[:16]

    def content(self) -> dict:
        return {
            "k": self.k,
            "seed": self.seed,
            "stratify": self.stratify,
            "test": {str(f): s for f, s in self.test.items()},
            "val": {str(f): s for f, s in self.val.items()},
        }

    def splits(self, fold: int) -> dict[str, str]:
        """Subject -> ``train``/``val``/``test`` for trial fold ``fold``."""
        if fold not in self.test:
            raise UserError(f"fold {fold} does not exist: folds are 0..{self.k - 1}")
        out = {s: "train" for subjects in self.test.values() for s in subjects}
        out.update({s: "val" for s in self.val[fold]})
        out.update({s: "test" for s in self.test[fold]})
        return out


def _subject_table(manifest: pd.DataFrame, stratify: str | None) -> pd.Series:
    """Each subject's stratum (one value per subject), in sorted subject order."""
    subjects = sorted(manifest["subject"].astype(str).unique())
    if stratify is None:
        return pd.Series("", index=subjects)
    if stratify not in manifest.columns:
        columns = [c for c in manifest.columns if c not in ("slice", "split")]
        raise UserError(
            f"data.stratify: the dataset has no column '{stratify}': name one of "
            f"{', '.join(columns)}, or drop data.stratify"
        )
    per_subject = manifest.groupby(manifest["subject"].astype(str))[stratify].nunique()
    varying = per_subject[per_subject > 1]
    if not varying.empty:
        raise UserError(
            f"data.stratify: column '{stratify}' varies within subject {varying.index[0]}: "
            "name a column with one value per subject"
        )
    values = manifest.groupby(manifest["subject"].astype(str))[stratify].first()
    return values.astype(str).reindex(subjects)


def assign_folds(manifest: pd.DataFrame, k: int, seed: int, stratify: str | None) -> Folds:
    """Deal the subjects into ``k`` folds: each stratum shuffled (seeded) and dealt in turn,
    the deal carrying on across strata so the folds' sizes differ by at most one."""
    strata = _subject_table(manifest, stratify)
    n = len(strata)
    if k < 2:
        raise UserError(f"data.folds: {k} is not cross-validation: use 2 or more, or none")
    if k > n:
        raise UserError(
            f"data.folds: {k} folds but the dataset has {n} subjects: use at most {n} folds"
        )
    if n - -(-n // k) < 2:  # the largest fold's training part: 1 train + 1 validation subject
        raise UserError(
            f"data.folds: {k} folds of {n} subjects leave one training subject per fold, none "
            "to validate on: use fewer folds or more subjects"
        )
    rng = np.random.default_rng(seed)
    test: dict[int, list[str]] = {f: [] for f in range(k)}
    dealt = 0
    for value in sorted(strata.unique()):
        members = sorted(strata.index[strata == value])
        for subject in rng.permutation(members).tolist():
            test[dealt % k].append(subject)
            dealt += 1
    val: dict[int, list[str]] = {}
    for fold in range(k):
        training = sorted(s for f, subjects in test.items() if f != fold for s in subjects)
        n_val = min(max(1, round(VAL_FRACTION * len(training))), len(training) - 1)
        draw = np.random.default_rng([seed, fold]).permutation(training).tolist()
        val[fold] = sorted(draw[:n_val])
    return Folds(k, seed, stratify, {f: sorted(s) for f, s in test.items()}, val)


def fold_file(root: Path, k: int, seed: int, stratify: str | None) -> Path:
    """Where a dataset's frozen assignment for these settings is recorded."""
    return Path(root) / FOLDS_DIR / f"{k}-seed{seed}-{stratify or 'none'}.json"


def dataset_folds(data: DataConfig, root: Path) -> Folds | None:
    """The dataset's frozen folds for ``data`` (None with ``data.folds: none``): read from its
    fold file, or dealt and written there on first use (atomically: a concurrent writer's
    identical copy wins). A recorded file whose subjects are not the dataset's is an error."""
    if data.folds is None:
        return None
    path = fold_file(root, data.folds, data.fold_seed, data.stratify)
    manifest = read_manifest(root)
    if path.is_file():
        folds = _read(path)
        recorded = sorted(s for subjects in folds.test.values() for s in subjects)
        if recorded != sorted(manifest["subject"].astype(str).unique()):
            raise UserError(
                f"{path}: the recorded folds name other subjects than the dataset's: "
                "delete the file to deal the folds again"
            )
        return folds
    folds = assign_folds(manifest, data.folds, data.fold_seed, data.stratify)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({**folds.content(), "hash": folds.hash}, indent=2))
    tmp.replace(path)
    return folds


def _read(path: Path) -> Folds:
    try:
        raw = json.loads(path.read_text())
        folds = Folds(
            int(raw["k"]),
            int(raw["seed"]),
            raw["stratify"],
            {int(f): list(s) for f, s in raw["test"].items()},
            {int(f): list(s) for f, s in raw["val"].items()},
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"{path}: unreadable fold record: delete it to deal the folds again"
        ) from None
    if raw.get("hash") != folds.hash:
        raise UserError(f"{path}: the fold record does not match its hash: delete it to redeal")
    return folds


def check_folds(data: DataConfig) -> None:
    """Refuse folds the dataset cannot have (more folds than subjects, an unknown stratify
    column) before anything starts: an existing folder is read, a preset's subjects counted."""
    if data.folds is None:
        return
    if data.path is not None:
        assign_folds(read_manifest(data.path), data.folds, data.fold_seed, data.stratify)
        return
    from ablate.data.simulate import resolve_config

    # a preset's subjects are counted here; its columns (stratify) are checked once it is
    # built, before the launch opens its MLflow run (ablate.launch.driver)
    subjects = [f"s{i}" for i in range(sum(resolve_config(data.preset, data.overrides).split))]
    assign_folds(pd.DataFrame({"subject": subjects}), data.folds, data.fold_seed, None)


def trial_splits(
    data: DataConfig, fold: int | None, root: Path, expected_hash: str = ""
) -> Mapping[str, str] | None:
    """Subject -> split for a trial's fold (None: the dataset's own split). ``expected_hash``
    is the launch's fold hash: a node whose folds differ stops the trial."""
    folds = dataset_folds(data, root)
    if folds is None:
        return None
    if fold is None:
        raise UserError("data.folds is set but the trial has no fold: launch it again")
    if expected_hash and folds.hash != expected_hash:
        raise UserError(
            f"the folds of {root} (hash {folds.hash}) are not the launch's ({expected_hash}): "
            "the dataset's fold record differs on this node; copy the launch's folds/ folder"
        )
    return folds.splits(fold)
