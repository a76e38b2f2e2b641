"""Torch datasets over the on-disk format of :mod:`ablate.data.format`.

One item is one axial slice of one subject of one split, as a dict of float32 tensors
without batch dimension, holding exactly the keys asked for:

- ``lpet`` [1, H, W], ``spet`` [1, H, W]: low-dose image and the reference image. For
  low-dose datasets the reference is the full-dose reconstruction; for sinogram datasets
  (``sinogram-256``) it is the high-count OSEM reference, as in paper 000.
- ``lpet_nas`` / ``spet_nas`` [5, H, W]: slices i-2..i+2 of the same subject; a neighbour
  off the volume is replaced by the centre slice (the reference implementation's policy).
- ``negatives`` [N, H, W]: full-dose slices of N *other* subjects of the same split at the
  same slice index (clamped to their volume), drawn with a generator seeded by
  ``(seed, draw, index)`` so an item is reproducible. Without replacement while there are at
  least N other subjects, with replacement otherwise. Index ``draw * len + i`` is item
  ``i`` with its ``draw``-th set of negatives: the training sampler passes the epoch that
  way (loader workers cannot be told it), so each epoch sees fresh negatives.
- ``sinogram`` [1, A, D]: the measured sinogram (angles x bins).

Arrays are opened lazily with ``np.load(mmap_mode="r")`` in each worker process (a memmap
must not be pickled into DataLoader workers), so reading a slice costs a page-cache copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ablate.data.format import SPLITS, array_path, read_provenance, validate_dataset
from ablate.errors import UserError

ALL_KEYS = frozenset({"lpet", "spet", "lpet_nas", "spet_nas", "negatives", "sinogram"})
NAS_OFFSETS = (-2, -1, 0, 1, 2)

#: which stored array each batch key reads
_SOURCE = {
    "lpet": "lpet",
    "spet": "spet",
    "lpet_nas": "lpet",
    "spet_nas": "spet",
    "negatives": "spet",
    "sinogram": "sinogram",
}
_MAKES = {
    "lpet": "tiny or lowdose-128",
    "lpet_nas": "tiny or lowdose-128",
    "sinogram": "tiny or sinogram-256",
}


def available_keys(root: Path) -> frozenset[str]:
    """The batch keys a dataset folder can provide."""
    arrays = set(read_provenance(Path(root)).get("arrays", []))
    return frozenset(key for key, kind in _SOURCE.items() if kind in arrays)


class SliceDataset(Dataset):
    """Slices of one split of a dataset folder, with the requested batch keys.

    Args:
        root: dataset folder (``manifest.parquet`` + ``subjects/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        keys: batch keys to return (see the module docstring).
        negatives: N, the number of negatives when ``"negatives"`` is requested.
        seed: seeds the draw of negatives (together with the item index).
        splits: subject -> split replacing the manifest's ``split`` column: a cross-validation
            fold's assignment (:func:`ablate.data.folds.trial_splits`).
    """

    def __init__(
        self,
        root: Path,
        split: Literal["train", "val", "test"],
        keys: Iterable[str],
        negatives: int = 0,
        seed: int = 0,
        splits: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        if split not in SPLITS:
            raise UserError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
        self.keys = frozenset(keys)
        unknown = self.keys - ALL_KEYS
        if unknown:
            raise UserError(
                f"unknown batch key(s) {sorted(unknown)}: valid keys are {sorted(ALL_KEYS)}"
            )
        manifest = validate_dataset(self.root)
        have = available_keys(self.root)
        missing = sorted(self.keys - have)
        if missing:
            key = missing[0]
            raise UserError(
                f"dataset {self.root} cannot provide '{key}' (it has {sorted(have)}): "
                f"use a dataset with it, e.g. preset {_MAKES.get(key, 'tiny')}"
            )
        of = manifest["split"] if splits is None else manifest["subject"].astype(str).map(splits)
        rows = manifest[of == split]
        if rows.empty:
            raise UserError(f"dataset {self.root} has no '{split}' subjects")
        self.split = split
        #: True when ``splits`` replaced the manifest's split (a cross-validation fold): the
        #: split's name then no longer identifies its subjects, the subject list does.
        self.refolded = splits is not None
        self.subjects: list[str] = list(dict.fromkeys(rows["subject"].astype(str)))
        self._slices = rows.groupby("subject", sort=False).size().to_dict()
        self._index = [
            (str(s), int(i)) for s, i in zip(rows["subject"], rows["slice"], strict=True)
        ]
        self.image_size = int(rows["height"].iloc[0])
        self.negatives = negatives
        self.seed = seed
        if "negatives" in self.keys:
            if negatives < 1:
                raise UserError("'negatives' requested with negatives=0: set loss.negatives >= 1")
            if len(self.subjects) < 2:
                raise UserError(
                    f"the '{split}' split of {self.root} has one subject: negatives need at "
                    "least two (simulate more subjects)"
                )
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._index)

    def locate(self, index: int) -> tuple[str, int]:
        """(subject, slice) of item ``index``: whose volume, and where in it."""
        return self._index[index % len(self._index)]

    def items_by_subject(self) -> dict[str, list[int]]:
        """The item indices of each subject of the split, in slice order."""
        out: dict[str, list[int]] = {s: [] for s in self.subjects}
        for index, (subject, _) in sorted(enumerate(self._index), key=lambda e: e[1]):
            out[subject].append(index)
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}  # reopen memmaps in each worker instead of pickling them
        return state

    def _array(self, subject: str, kind: str) -> np.ndarray:
        arr = self._arrays.get((subject, kind))
        if arr is None:
            arr = np.load(array_path(self.root, subject, kind), mmap_mode="r")
            self._arrays[(subject, kind)] = arr
        return arr

    def _stack(self, subject: str, kind: str, i: int) -> torch.Tensor:
        arr = self._array(subject, kind)
        n = arr.shape[0]
        idx = [j if 0 <= j < n else i for j in (i + o for o in NAS_OFFSETS)]
        return torch.from_numpy(np.ascontiguousarray(arr[idx], dtype=np.float32))

    def _negatives(self, draw: int, index: int, subject: str, i: int) -> torch.Tensor:
        others = [s for s in self.subjects if s != subject]
        seed = np.random.SeedSequence([self.seed, draw, index]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(seed))
        if len(others) >= self.negatives:
            picks = torch.randperm(len(others), generator=g)[: self.negatives]
        else:
            picks = torch.randint(len(others), (self.negatives,), generator=g)
        out = []
        for p in picks.tolist():
            other = others[p]
            j = min(i, self._slices[other] - 1)
            out.append(np.asarray(self._array(other, "spet")[j], dtype=np.float32))
        return torch.from_numpy(np.stack(out))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        draw, index = divmod(index, len(self._index))
        subject, i = self._index[index]
        item: dict[str, torch.Tensor] = {}
        for key in self.keys:
            if key in ("lpet", "spet", "sinogram"):
                arr = self._array(subject, _SOURCE[key])[i]
                item[key] = torch.from_numpy(np.array(arr, dtype=np.float32))[None]
            elif key in ("lpet_nas", "spet_nas"):
                item[key] = self._stack(subject, _SOURCE[key], i)
            else:
                item[key] = self._negatives(draw, index, subject, i)
        return item
