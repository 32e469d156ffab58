"""The transformers model with its parameters on the ``meta`` device.

The skeleton gives the engine transformers' own modules (decoder layers,
rotary embedding, norms) without allocating any weight. Buffers are computed
for real, because some (rotary frequencies, embedding scales) are not stored
in checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights


def build_skeleton(config: PretrainedConfig) -> PreTrainedModel:
    # A copy: the engine changes its skeleton's config (attention dispatch).
    config = copy.deepcopy(config)
    with no_init_weights(), _parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config)
    return model.eval()


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=False)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    return model.get_decoder().layers


def materialized_nbytes(module: nn.Module) -> int:
    """Bytes of parameters that hold real storage (not on ``meta``)."""
    params = (p for p in module.parameters() if p.device.type != "meta")
    return sum(p.numel() * p.element_size() for p in params)
