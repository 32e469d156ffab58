"""Engine vectors turned into OpenAI's embedding list: normalized, encoded.

The engine hands back each input's mean final hidden state. A decoder language
model has no trained pooling head, so the mean over the input's tokens is the
plain choice; the API then scales it to unit length, after cutting it to
``dimensions`` if asked (Matryoshka style: the first components, normalized
again), as OpenAI's vectors are.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence

import numpy as np

from engine.request import EmbeddingEvent, EmbeddingRequest, ErrorEvent
from server.choices import Tally
from server.generation import ChoiceStreams
from server.schemas.embeddings import (
    Embedding,
    EmbeddingList,
    EmbeddingsRequest,
    EmbeddingUsage,
)

# Keeps a zero vector at zero instead of dividing by nothing.
_MIN_NORM = 1e-12


def new_embedding_id() -> str:
    return f"embd-{uuid.uuid4().hex}"


def embedding_requests(
    request_id: str, inputs: list[list[int]]
) -> list[EmbeddingRequest]:
    """One engine request per input, all submitted at once to share sweeps."""
    return [
        EmbeddingRequest(request_id if index == 0 else f"{request_id}-{index}", ids)
        for index, ids in enumerate(inputs)
    ]


async def collect_vectors(
    streams: ChoiceStreams, tally: Tally
) -> list[tuple[float, ...]]:
    """Every input's vector, in order; the first engine error is raised."""
    vectors: list[tuple[float, ...]] = [() for _ in range(streams.num_choices)]
    async for index, event in streams.events():
        tally.note(index, event)
        match event:
            case EmbeddingEvent(vector=vector):
                vectors[index] = vector
            case ErrorEvent(error=error):
                raise error
    return vectors


def normalized(vector: Sequence[float], dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` components (all if None), at unit length."""
    cut = np.asarray(vector[:dimensions], dtype=np.float64)
    return cut / max(float(np.linalg.norm(cut)), _MIN_NORM)


def encoded(vector: np.ndarray, is_base64: bool) -> list[float] | str:
    if not is_base64:
        return vector.tolist()
    # What OpenAI's SDK decodes: the float32 values' little-endian bytes.
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


def embedding_list(
    vectors: list[tuple[float, ...]],
    body: EmbeddingsRequest,
    model: str,
    prompt_tokens: int,
) -> EmbeddingList:
    data = [
        Embedding(
            index=index,
            embedding=encoded(normalized(vector, body.dimensions), body.is_base64),
        )
        for index, vector in enumerate(vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens)
    return EmbeddingList(data=data, model=model, usage=usage)
