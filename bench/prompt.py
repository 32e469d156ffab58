"""The one chat prompt every system answers, so that all do the same work.

With SmolLM2's chat template (which adds its default system turn) it is 42
tokens long, and the model's greedy answer runs well past 64 tokens without
reaching an end-of-turn token.
"""

from __future__ import annotations

USER_MESSAGE = "Write a short story about a lighthouse keeper and the sea."


def chat_messages() -> list[dict[str, str]]:
    return [{"role": "user", "content": USER_MESSAGE}]
