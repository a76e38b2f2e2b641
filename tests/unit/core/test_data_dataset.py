"""SliceDataset: keys, shapes, neighbour policy, reproducible negatives, loader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ablate.config import DataConfig
from ablate.data.dataset import SliceDataset, available_keys
from ablate.data.format import array_path
from ablate.data.simulate import simulate_dataset
from ablate.data.store import build_dataset
from ablate.errors import UserError

SMALL = {"subjects": 5, "split": [3, 1, 1], "slices": 6}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> object:
    return build_dataset(DataConfig(preset="tiny", overrides=SMALL), tmp_path_factory.mktemp("d"))


def test_items_have_exactly_the_requested_keys_and_shapes(tiny) -> None:
    keys = {"lpet", "spet", "lpet_nas", "spet_nas", "negatives", "sinogram"}
    assert available_keys(tiny) == frozenset(keys)
    ds = SliceDataset(tiny, "train", keys, negatives=2, seed=0)
    assert len(ds) == 3 * 6 and ds.image_size == 32 and len(ds.subjects) == 3
    item = ds[0]
    assert set(item) == keys
    assert item["lpet"].shape == (1, 32, 32) and item["spet"].shape == (1, 32, 32)
    assert item["lpet_nas"].shape == (5, 32, 32) and item["spet_nas"].shape == (5, 32, 32)
    assert item["negatives"].shape == (2, 32, 32) and item["sinogram"].shape == (1, 48, 48)
    assert all(v.dtype == torch.float32 for v in item.values())
    only = SliceDataset(tiny, "test", ["spet"])[0]
    assert set(only) == {"spet"}


def test_neighbours_replace_off_volume_slices_by_the_centre(tiny) -> None:
    ds = SliceDataset(tiny, "val", ["spet", "spet_nas"])
    vol = np.load(array_path(tiny, ds.subjects[0], "spet"))
    first = ds[0]["spet_nas"].numpy()
    np.testing.assert_array_equal(first[0], vol[0])  # i-2 off the volume -> centre
    np.testing.assert_array_equal(first[1], vol[0])
    np.testing.assert_array_equal(first[3], vol[1])
    np.testing.assert_array_equal(ds[3]["spet_nas"].numpy(), vol[1:6])


def test_negatives_come_from_other_subjects_and_are_reproducible(tiny) -> None:
    ds = SliceDataset(tiny, "train", ["spet", "negatives"], negatives=2, seed=7)
    index = 8  # subject 1, slice 2
    subject = ds.subjects[1]
    others = {s: np.load(array_path(tiny, s, "spet"))[2] for s in ds.subjects if s != subject}
    negs = ds[index]["negatives"].numpy()
    for neg in negs:
        assert any(np.array_equal(neg, o) for o in others.values())
    assert not np.array_equal(negs[0], negs[1])
    np.testing.assert_array_equal(negs, ds[index]["negatives"].numpy())
    same_seed = SliceDataset(tiny, "train", ["negatives"], negatives=2, seed=7)
    np.testing.assert_array_equal(negs, same_seed[index]["negatives"].numpy())
    # index + k * len: the same slice with the k-th draw of negatives (a new epoch)
    draws = [ds[index + k * len(ds)] for k in range(1, 6)]
    for item in draws:
        np.testing.assert_array_equal(item["spet"].numpy(), ds[index]["spet"].numpy())
    assert any(not np.array_equal(d["negatives"].numpy(), negs) for d in draws)


def test_low_and_full_dose_share_the_full_dose_scale(tiny) -> None:
    ds = SliceDataset(tiny, "train", ["lpet", "spet"])
    lp = torch.stack([ds[i]["lpet"] for i in range(len(ds))])
    sp = torch.stack([ds[i]["spet"] for i in range(len(ds))])
    assert 0.8 < float(lp.mean() / sp.mean()) < 1.2
    assert float(sp.max()) < 1.5


def test_missing_key_names_the_key_and_the_preset(tmp_path) -> None:
    root = simulate_dataset(
        "tiny", 0, {**SMALL, "slices": 2, "outputs": ["lpet", "spet"]}, tmp_path / "d"
    )
    with pytest.raises(UserError, match="cannot provide 'sinogram'.*sinogram-256"):
        SliceDataset(root, "train", ["lpet", "sinogram"])
    with pytest.raises(UserError, match="unknown batch key"):
        SliceDataset(root, "train", ["lpett"])
    with pytest.raises(UserError, match="not an ablate dataset"):
        SliceDataset(tmp_path, "train", ["lpet"])


def test_loader_with_worker_processes(tiny) -> None:
    ds = SliceDataset(tiny, "train", ["lpet", "spet", "negatives"], negatives=2)
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=True)
    batch = next(iter(loader))
    assert batch["lpet"].shape == (4, 1, 32, 32) and batch["negatives"].shape == (4, 2, 32, 32)
