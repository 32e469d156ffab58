"""Which kernel runs the linear layers' matrix products on the CPU.

torch's CPU build sends ``nn.Linear`` to the BLAS (MKL), whose float32 kernels
read the weights at well under the memory's rate on some processors (on AMD
EPYC about half of it, at one token and at many). The same build carries
oneDNN, whose linear kernel takes the very same dense weights, read in place,
and runs about 1.5 to 2.4 times faster there. Its sums run in another order,
so its outputs differ from the BLAS's in the last bits of float32, as two BLAS
builds' would; greedy outputs are tested to match transformers' all the same.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` whose product runs through oneDNN; same weights, same shapes."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            input, self.weight, self.bias, "none", [], ""
        )


def onednn_available() -> bool:
    # An internal operator of torch (its compiler's CPU backend calls it):
    # looked up, not assumed, so another torch build falls back to the BLAS.
    found = hasattr(torch.ops.mkldnn, "_linear_pointwise")
    return torch.backends.mkldnn.is_available() and found


def use_cpu_kernels(model: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Route the model's linear layers to the fastest kernel; its name, for the log.

    Only float32 on the CPU changes: on a GPU the BLAS is the fast path, and
    oneDNN's reduced-precision kernels on a CPU depend on instructions that not
    every processor has.
    """
    if device.type != "cpu" or dtype != torch.float32 or not onednn_available():
        return "torch"
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDnnLinear
    logger.info("linear layers run through oneDNN")
    return "onednn"
