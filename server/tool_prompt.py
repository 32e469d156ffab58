"""How offered tools reach the model: its chat template, or an instructions block.

A template that reads a ``tools`` variable (Qwen, Llama 3.1, Mistral) renders
them itself. For one that does not (SmolLM2, Gemma 3), the tools are described
in a system block that asks for calls in the ``<tool_call>`` format, the one
``server.tool_calls`` parses.
"""

from __future__ import annotations

import json
from functools import lru_cache

from jinja2 import Environment, meta
from jinja2.exceptions import TemplateSyntaxError
from transformers import PreTrainedTokenizerBase

from server.schemas.tools import Tool, ToolChoice
from server.tool_calls import CLOSE, OPEN


def has_native_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template renders tools and tool turns."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        # Named templates: transformers picks "tool_use" when tools are passed.
        template = template.get("tool_use") or template.get("default")
    return isinstance(template, str) and _reads_tools(template)


@lru_cache(maxsize=8)
def _reads_tools(template: str) -> bool:
    try:
        names = meta.find_undeclared_variables(Environment().parse(template))
    except TemplateSyntaxError:
        # Rendering will report the template itself; here it simply lacks tools.
        return False
    return "tools" in names


def tools_for_template(tools: list[Tool]) -> list[dict[str, object]]:
    """Tools in the shape chat templates expect: the OpenAI one, without Nones."""
    return [tool.model_dump(exclude_none=True) for tool in tools]


def tool_instructions(tools: list[Tool], choice: ToolChoice | None) -> str:
    """A system block that teaches a template-less model to call the tools."""
    listing = "\n".join(
        json.dumps(tool.model_dump(exclude_none=True)["function"]) for tool in tools
    )
    example = f'{OPEN}\n{{"name": "<function name>", "arguments": {{...}}}}\n{CLOSE}'
    return (
        "You can call the following functions, described as JSON:\n"
        f"{listing}\n\n"
        "To call a function, reply with exactly this, one block per call:\n"
        f"{example}\n"
        f"{_when_to_call(choice)}"
    )


def _when_to_call(choice: ToolChoice | None) -> str:
    if choice == "required":
        return "You must call at least one function."
    if choice is not None and not isinstance(choice, str):
        return f"You must call the function {choice.function.name}."
    return "Call a function only when it helps; otherwise answer normally."
