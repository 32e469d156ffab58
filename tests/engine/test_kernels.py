"""The oneDNN linear kernel: torch's product to float32 rounding, same shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.kernels import OneDnnLinear, onednn_available, use_cpu_kernels

pytestmark = pytest.mark.skipif(not onednn_available(), reason="no oneDNN in torch")


@pytest.mark.parametrize("shape", [(7, 64), (1, 5, 64), (1, 1, 64)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_torch(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(64, 96, bias=bias)
    x = torch.randn(shape)
    expected = F.linear(x, layer.weight, layer.bias)

    layer.__class__ = OneDnnLinear
    with torch.inference_mode():
        got = layer(x)

    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_only_float32_on_the_cpu_changes_kernel() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))

    assert use_cpu_kernels(model, torch.device("cpu"), torch.bfloat16) == "torch"
    assert type(model[0]) is nn.Linear

    assert use_cpu_kernels(model, torch.device("cpu"), torch.float32) == "onednn"
    assert type(model[0]) is OneDnnLinear
    assert type(model[1]) is nn.LayerNorm
