"""Which kernel runs the linear layers' matrix products on the CPU.

torch's CPU build sends ``nn.Linear`` to the BLAS (MKL), whose float32 kernels
read the weights at well under the memory's rate on some processors (on AMD
EPYC about half of it, at one token and at many). The same build carries
oneDNN, whose linear kernel takes the very same dense weights, read in place,
and runs about 1.5 to 2.4 times faster there. Its sums run in another order,
so its outputs differ from the BLAS's in the last bits of float32, as two BLAS
builds' would; greedy outputs are tested to match transformers' all the same.
Faster still is oneDNN's own blocked order of the weights (``engine.onednn``),
which resident weights take as they load and the engine's store holds on disk.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from engine.onednn import (
    BlockedEmbedding,
    Blocking,
    cached_view,
    machine_blocking,
    picks,
)

if TYPE_CHECKING:
    from engine.fusion import FusedProjection

logger = logging.getLogger(__name__)


class OneDnnLinear(nn.Linear):
    """An ``nn.Linear`` whose product runs through oneDNN; same weights, same shapes.

    Its weight is either plain (``[out, in]``) or in oneDNN's blocked order
    (four dimensions, see ``engine.onednn``). One of a fused group
    (``engine.fusion``) either runs the group's product or returns its share.
    """

    fused: FusedProjection | None = None  # set on a group's first member
    pending: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, share)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            source, share = self.pending
            self.pending = None
            if source is input:
                return share
        if self.fused is not None:
            return self.fused.run(input)
        return onednn_linear(input, self.weight, self.bias)


def onednn_linear(
    input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``input`` times a plain or a blocked (four-dimensional) weight, plus ``bias``."""
    if weight.dim() == 4:
        weight = cached_view(weight)
    return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")


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


def cpu_blocking(device: torch.device, dtype: torch.dtype) -> Blocking | None:
    """The blocked order the linear kernel would take here, before any shape is seen."""
    if device.type != "cpu" or dtype != torch.float32 or not onednn_available():
        return None
    return machine_blocking()


def choose_blocking(model: nn.Module, kernel: str) -> Blocking | None:
    """The blocked order for the model's weights; None keeps them all plain.

    Only when oneDNN runs the products. A weight whose shape oneDNN lays out
    otherwise, or too large to probe, stays plain on its own (``picks``).
    """
    blocking = machine_blocking() if kernel == "onednn" else None
    if blocking is None:
        return None
    # Every shape is probed now, before the weights load: a probe holds its
    # weight twice for a moment, and the answers are kept for the blocking.
    shapes = {
        tuple(module.weight.shape)
        for module in model.modules()
        if isinstance(module, OneDnnLinear)
    }
    plain = [shape for shape in shapes if not picks(blocking, shape)]
    if plain:
        logger.debug("weights of shapes %s stay in the plain order", sorted(plain))
    return blocking


def block_linears(module: nn.Module, blocking: Blocking) -> None:
    """Every plain oneDNN linear weight under ``module``, in the blocked order."""
    for linear in module.modules():
        if isinstance(linear, OneDnnLinear) and _blockable(linear.weight, blocking):
            linear.weight = _blocked(linear.weight, blocking)


def block_head(model: nn.Module, blocking: Blocking) -> bool:
    """The output head in the blocked order; its tied embedding reads it there.

    A tied embedding that does more than look rows up (Gemma scales them)
    keeps the head plain.
    """
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if not isinstance(head, OneDnnLinear) or not _blockable(head.weight, blocking):
        return False
    tied = head.weight is embedding.weight
    if tied and type(embedding) is not nn.Embedding:
        return False
    head.weight = _blocked(head.weight, blocking)
    if tied:
        embedding.__class__ = BlockedEmbedding
        embedding.blocking = blocking
        embedding.weight = head.weight
    return True


def _blockable(weight: torch.Tensor, blocking: Blocking) -> bool:
    return (
        weight.dim() == 2
        and weight.dtype == torch.float32
        and picks(blocking, tuple(weight.shape))
    )


def _blocked(weight: torch.Tensor, blocking: Blocking) -> nn.Parameter:
    return nn.Parameter(blocking.block(weight.detach()), requires_grad=False)
