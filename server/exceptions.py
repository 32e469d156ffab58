"""Errors the server raises itself, each carrying its OpenAI error fields."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses; the error boundary turns it into JSON."""

    status_code: int = 400
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after_s: int | None = None  # sent as Retry-After when set


class ModelNotFound(ApiError):
    status_code = 404
    param = "model"
    code = "model_not_found"

    def __init__(self, requested: str, served: str) -> None:
        super().__init__(
            f"model {requested!r} does not exist; this server serves {served!r}"
        )


class ContextLengthExceeded(ApiError):
    code = "context_length_exceeded"

    def __init__(
        self,
        prompt_tokens: int,
        context_length: int,
        is_lower_bound: bool = False,
        param: str = "messages",
        has_completion: bool = True,
    ) -> None:
        count = f"at least {prompt_tokens}" if is_lower_bound else str(prompt_tokens)
        including = ", including the completion" if has_completion else ""
        super().__init__(
            f"'{param}' is {count} tokens long but the model's context holds "
            f"{context_length} tokens{including}; shorten it"
        )
        self.param = param


class EmptyPrompt(ApiError):
    def __init__(self, param: str) -> None:
        super().__init__(f"'{param}' gives no tokens")
        self.param = param


class InvalidMessages(ApiError):
    """The model's chat template cannot render these messages."""

    param = "messages"

    def __init__(self, reason: str) -> None:
        super().__init__(f"the model's chat template rejected the messages: {reason}")


class NoChatTemplate(ApiError):
    param = "messages"

    def __init__(self) -> None:
        super().__init__("the model has no chat template, so it cannot take messages")


class UnknownTokens(ApiError):
    def __init__(
        self, param: str, position: int, token_id: int, vocab_size: int
    ) -> None:
        super().__init__(
            f"{param}[{position}] is {token_id}, not an id of the vocabulary "
            f"[0, {vocab_size})"
        )
        self.param = param


class InvalidDimensions(ApiError):
    param = "dimensions"

    def __init__(self, dimensions: int, hidden_size: int) -> None:
        super().__init__(
            f"dimensions is {dimensions}; the model's embeddings have 1 to "
            f"{hidden_size}"
        )


class TooManySequences(ApiError):
    """More sequences than the engine's queue holds: they could never all wait."""

    def __init__(self, param: str, count: int, limit: int) -> None:
        super().__init__(
            f"{param} asks for {count} sequences at once; this server queues at "
            f"most {limit} (its max_queue): send them in several requests"
        )
        self.param = param


class UnenforceableOutput(ApiError):
    """The grammar for the answer's required form does not compile."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param} cannot be enforced: {reason}")
        self.param = param


class InvalidApiKey(ApiError):
    status_code = 401
    code = "invalid_api_key"

    def __init__(self, is_missing: bool) -> None:
        super().__init__(
            "no API key given; send the header 'Authorization: Bearer KEY'"
            if is_missing
            else "the API key is not valid"
        )


class BodyTooLarge(ApiError):
    status_code = 413
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes")


class ServiceUnavailable(ApiError):
    """The server is up but takes no new work right now; retry later."""

    status_code = 503
    type = "server_error"
    retry_after_s = 5


class ModelLoading(ServiceUnavailable):
    code = "model_loading"

    def __init__(self) -> None:
        super().__init__("the model is still loading; retry shortly")


class ShuttingDown(ServiceUnavailable):
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("the server is shutting down and takes no new requests")
