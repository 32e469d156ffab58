"""The one chat prompt every system answers, so that all do the same work.

With SmolLM2's chat template (which adds its default system turn) it is 42
tokens long, and the model's greedy answer runs well past 64 tokens without
reaching an end-of-turn token.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

USER_MESSAGE = "Write a short story about a lighthouse keeper and the sea."


def chat_messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": USER_MESSAGE}]


def prompt_length(tokenizer_folder: Path) -> int:
    """Tokens of the prompt once the model's chat template is applied."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    ids = tokenizer.apply_chat_template(
        chat_messages(), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return len(ids)
