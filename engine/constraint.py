"""The seam through which a request restricts the tokens it may generate.

The engine knows no grammar library: a request may carry a factory that makes
one ``TokenConstraint`` per sequence, and the worker asks it to mask each
logits row before sampling and tells it every token it accepted. Requests
without one pay a single ``is None`` test per token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch


class TokenConstraint(Protocol):
    """Per-sequence grammar state; lives on, and is called from, the worker."""

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ([vocab]) with every token the grammar forbids at -inf.

        Stop tokens must stay allowed where the grammar may end: the engine
        finishes a sequence on a stop token without telling the constraint.
        """
        ...

    def accept(self, token_id: int) -> None:
        """Advance past a token sampled from the masked row."""
        ...

    # A grammar that fails on the way (``mask`` or ``accept``) raises
    # ``engine.errors.InvalidRequestError``: the request's fault, so only that
    # sequence ends, with a 400 naming the field, and no traceback is logged.

    @property
    def is_finished(self) -> bool:
        """True once the grammar admits no further token: the answer is whole."""
        ...


# Called once per sequence, on the submitting thread, so a sequence never
# shares grammar state with another (several choices, a retry).
ConstraintFactory = Callable[[], TokenConstraint]
