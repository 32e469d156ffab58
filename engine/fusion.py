"""Projections of the same input, run as one product.

A layer's q, k and v projections (and its MLP's gate and up) multiply the
same hidden state by weights of the same input size. In oneDNN's blocked
order, weights that lie one after another are the blocked order of their
concatenation, so a group runs as one product over the memory they span:
fewer, larger products, each of which pays a fixed cost to start on top of
its arithmetic (q, k and v together took a third less time than apart, at one
token and at sixteen, on a 2-core EPYC). The group's first projection runs the
product and hands every other member its share, which that member returns
when transformers calls it next with the same input.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.checkpoint import Checkpoint
from engine.kernels import OneDnnLinear, onednn_linear

# Projections that transformers' layers call one after another on one input.
GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass
class FusedProjection:
    weight: torch.Tensor  # the members' blocked weights, end to end
    members: list[OneDnnLinear]
    widths: list[int] = field(init=False)  # each member's out_features

    def __post_init__(self) -> None:
        self.widths = [member.out_features for member in self.members]

    def run(self, input: torch.Tensor) -> torch.Tensor:
        """The first member's output; the others' wait in their ``pending``."""
        out = onednn_linear(input, self.weight)  # [..., sum of out_features]
        parts = out.split(self.widths, dim=-1)
        shares = [
            part if member.bias is None else part + member.bias
            for member, part in zip(self.members, parts, strict=True)
        ]
        for member, share in zip(self.members[1:], shares[1:], strict=True):
            member.pending = (input, share)
        return shares[0]


@dataclass(frozen=True)
class Group:
    keys: list[str]  # the members' weights, as the layer names them
    members: list[OneDnnLinear]


def fuse_in_place(layer: nn.Module, index: int, checkpoint: Checkpoint) -> int:
    """Groups of a layer used in place whose blocked weights lie end to end."""
    fused = 0
    for group in groups(layer):
        weight = checkpoint.blocked_group(index, group.keys)
        if weight is not None:
            group.members[0].fused = FusedProjection(weight, group.members)
            fused += 1
    return fused


def fuse_resident(layer: nn.Module) -> int:
    """Groups of a resident layer, their blocked weights copied end to end."""
    fused = 0
    for group in groups(layer):
        weights = [member.weight for member in group.members]
        if any(w.dim() != 4 or w.shape[1:] != weights[0].shape[1:] for w in weights):
            continue
        whole = torch.cat([w.detach() for w in weights])
        start = 0
        for member, weight in zip(group.members, weights, strict=True):
            part = whole[start : start + weight.shape[0]]
            member.weight = nn.Parameter(part, requires_grad=False)
            start += weight.shape[0]
        group.members[0].fused = FusedProjection(whole, group.members)
        fused += 1
    return fused


def groups(layer: nn.Module) -> Iterator[Group]:
    for name, module in layer.named_modules():
        for names in GROUPS:
            members = [getattr(module, child, None) for child in names]
            if not all(type(member) is OneDnnLinear for member in members):
                continue
            if len({member.in_features for member in members}) != 1:
                continue
            prefix = f"{name}." if name else ""
            keys = [f"{prefix}{child}.weight" for child in names]
            yield Group(keys, members)
