"""Parameter and MAC counting: hand-checked numbers, meta device == real device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ablate.planning.complexity import count_macs, count_params


class Tiny(nn.Module):
    """conv (with GroupNorm), strided conv, transposed conv, grouped conv, linear, attention."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)  # 8*2*9 + 8 = 152 params
        self.norm = nn.GroupNorm(2, 8)  # excluded by thop: 16 params
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)  # 576
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)  # 8*4*4 + 4 = 132
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)  # 4*2*9 + 4 = 76
        self.fc = nn.Linear(4, 3)  # 12 + 3 = 15
        self.scale = nn.Parameter(torch.ones(1))  # free-standing: excluded by thop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x))
        h = self.up(self.down(h))
        h = self.grouped(h) * self.scale
        q = h.flatten(2)  # attention-style matmul: not counted
        h = (q @ q.transpose(1, 2)).softmax(-1) @ q
        return self.fc(h.mean(-1))


def test_param_counts() -> None:
    model = Tiny()
    assert count_params(model) == 152 + 576 + 132 + 76 + 15
    assert count_params(model, "total") == 152 + 16 + 576 + 132 + 76 + 15 + 1
    model.fc.requires_grad_(False)
    assert count_params(model) == 152 + 576 + 132 + 76
    with pytest.raises(ValueError, match="convention"):
        count_params(model, "flops")  # type: ignore[arg-type]


def test_shared_parameters_count_once() -> None:
    conv = nn.Conv2d(1, 1, 3)
    assert count_params(nn.Sequential(conv, conv)) == 10
    assert count_params(nn.Sequential(conv, conv), "total") == 10


def _expected_macs(batch: int, size: int) -> int:
    hw, half = size * size, (size // 2) ** 2
    conv = batch * 8 * hw * 2 * 9
    down = batch * 8 * half * 8 * 9
    up = batch * 8 * half * 4 * 4  # input elements * out_channels * kernel
    grouped = batch * 4 * hw * 2 * 9
    fc = batch * 3 * 4
    return conv + down + up + grouped + fc


def test_mac_count_by_hand() -> None:
    model = Tiny()
    x = torch.rand(2, 2, 8, 8)
    assert count_macs(lambda: model(x), model) == _expected_macs(2, 8)


def test_every_call_is_counted_and_hooks_are_removed() -> None:
    model = Tiny()
    x = torch.rand(1, 2, 8, 8)
    assert count_macs(lambda: [model(x) for _ in range(3)], model) == 3 * _expected_macs(1, 8)
    assert not any(m._forward_hooks for m in model.modules())


def test_hooks_are_removed_when_fn_fails() -> None:
    model = Tiny()

    def broken() -> None:
        model(torch.rand(1, 2, 8, 8))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        count_macs(broken, model)
    assert not any(m._forward_hooks for m in model.modules())


def test_meta_device_gives_identical_counts() -> None:
    real = Tiny()
    with torch.device("meta"):
        meta = Tiny()
    x_real = torch.rand(1, 2, 16, 16)
    x_meta = torch.empty(1, 2, 16, 16, device="meta")
    assert count_params(meta) == count_params(real)
    assert count_params(meta, "total") == count_params(real, "total")
    assert count_macs(lambda: meta(x_meta), meta) == count_macs(lambda: real(x_real), real)


def test_meta_memoization_counts_repeated_calls_of_every_shape() -> None:
    """On meta, repeated calls are served from a cache; counts must still match real runs."""

    def calls(model: Tiny, device: str) -> None:
        for size in (8, 16, 8, 16, 16):
            model(torch.zeros(1, 2, size, size, device=device))

    real = Tiny()
    with torch.device("meta"):
        meta = Tiny()
    expected = 2 * _expected_macs(1, 8) + 3 * _expected_macs(1, 16)
    assert count_macs(lambda: calls(real, "cpu"), real) == expected
    assert count_macs(lambda: calls(meta, "meta"), meta) == expected
    assert all("forward" not in m.__dict__ for m in meta.modules())
