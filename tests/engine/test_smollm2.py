"""The real default model: its store and its answers equal transformers' own."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, PreTrainedModel

from engine.checkpoint import SINGLE_FILE, Checkpoint
from engine.kernels import cpu_blocking
from engine.loader import open_engine
from engine.options import EngineOptions
from engine.request import FinishEvent, GenerationRequest, SamplingParams, TokenEvent
from engine.store import export_plain
from tests.conftest import store_home

QUESTION = "What is the capital of France? Answer in one sentence."
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def reference(smollm2_gguf: Path) -> PreTrainedModel:
    """transformers' own GGUF loader, the whole model in memory, float32."""
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )
    return model.eval()


def test_store_holds_the_tensors_transformers_loads(
    smollm2_dir: Path, reference: PreTrainedModel
) -> None:
    expected = reference.state_dict()
    checkpoint = Checkpoint(smollm2_dir)
    stored = checkpoint.read_resident(torch.float32, owned=False)
    for index, layer in checkpoint.layers.items():
        whole = checkpoint.read_layer_whole(index, torch.float32, owned=False)
        stored.update({layer[key].key: tensor for key, tensor in whole.items()})
    assert set(stored) <= set(expected)
    for key, tensor in stored.items():
        assert torch.equal(tensor, expected[key]), key


def test_store_holds_the_layers_in_the_kernels_order(smollm2_dir: Path) -> None:
    blocking = cpu_blocking(torch.device("cpu"), torch.float32)
    layer = Checkpoint(smollm2_dir).layers[0]
    assert layer["mlp.up_proj.weight"].blocking == blocking
    assert layer["input_layernorm.weight"].blocking is None


def test_a_plain_export_loads_in_transformers(
    smollm2_dir: Path, reference: PreTrainedModel, tmp_path: Path
) -> None:
    plain = export_plain(smollm2_dir, tmp_path / "plain")
    with safe_open(plain / SINGLE_FILE, framework="pt") as stored:
        for key in ("model.layers.3.mlp.down_proj.weight", "model.norm.weight"):
            assert torch.equal(stored.get_tensor(key), reference.state_dict()[key])
    loaded = AutoModelForCausalLM.from_pretrained(plain, dtype=torch.float32)
    assert loaded.config.num_hidden_layers == reference.config.num_hidden_layers


def test_greedy_chat_answer_matches_transformers(
    smollm2_dir: Path, smollm2_tokenizer, reference: PreTrainedModel
) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    prompt = smollm2_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    generated = reference.generate(
        torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, do_sample=False
    )[0, len(prompt) :]
    expected_ids = [
        t for t in generated.tolist() if t != smollm2_tokenizer.eos_token_id
    ]

    text, finish = run_engine(prompt)
    assert text == smollm2_tokenizer.decode(expected_ids, skip_special_tokens=True)
    assert finish.completion_tokens == len(expected_ids)


def run_engine(prompt: list[int]) -> tuple[str, FinishEvent]:
    options = EngineOptions(torch.device("cpu"), torch.float32, home=store_home())
    engine = open_engine(None, options)
    events: queue.Queue = queue.Queue()
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    engine.submit(GenerationRequest("real", prompt, params), events.put)
    pieces = []
    while isinstance(event := events.get(timeout=120), TokenEvent):
        pieces.append(event.text)
    engine.shutdown()
    assert isinstance(event, FinishEvent), event
    return "".join(pieces), event
