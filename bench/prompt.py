"""The chat prompts every system answers, so that all do the same work.

Each concurrent request gets its own prompt: the same story request opened by
a different topic word. With SmolLM2's chat template (which adds its default
system turn) every one is 44 tokens long, and the model's greedy answer runs
well past 64 tokens. Only the system turn is common to all of them, as it is
for the users of one server, so layerstream's prefix cache saves them one
block of the system turn, not the whole prompt.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

STORY_REQUEST = "Write a short story about a lighthouse keeper and the sea."
# Words that keep every prompt at the same token count with SmolLM2's tokenizer.
TOPICS = (
    "Sea Moon Wind Night Rock Star Wave Sun Rain Snow Ice Fire Gold Blue Red Green "
    "Salt Sand Bird Fish Cloud Light Dark Home Road Tree"
).split()


# One stream is measured this many times, each on its own prompt (variants 0,
# 1, ...), and reported by the median: a one-stream run lasts about a second,
# and one second of a shared machine is noisy. The many-stream runs take the
# variants after these, so no prompt is asked twice of one server (its prefix
# cache would answer part of it).
SOLO_RUNS = 3


def solo_variants() -> range:
    return range(SOLO_RUNS)


def many_variants(streams: int) -> range:
    return range(SOLO_RUNS, SOLO_RUNS + streams)


def chat_messages(variant: int = 0) -> list[dict[str, str]]:
    """The prompt of request ``variant``; variants repeat after len(TOPICS)."""
    topic = TOPICS[variant % len(TOPICS)]
    return [{"role": "user", "content": f"{topic}. {STORY_REQUEST}"}]


def prompt_length(tokenizer_folder: Path) -> int:
    """Tokens of the first prompt once the model's chat template is applied."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    ids = tokenizer.apply_chat_template(
        chat_messages(), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return len(ids)
