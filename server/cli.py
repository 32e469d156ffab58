"""The ``layerstream`` command: ``serve`` the API, or ``pull`` the default model.

Flags override settings only when given, so ``config.yaml`` and the
environment keep their say over everything left out of the command line.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
from typing import Any

import uvicorn
import yaml
from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from engine import Engine, open_engine
from engine.errors import LayerstreamError
from engine.loader import store_blocking
from engine.store import pull_default_model
from server.app import attach_engine, create_app
from server.log_format import configure_logging
from server.settings import Settings, SettingsError, engine_options
from server.shutdown import Shutdown, StopRequested

logger = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_BAD_SETTINGS = 2
EXIT_INTERRUPTED = 130
# Responses still open when the HTTP side closes get this long to end.
_GRACEFUL_S = 5

_CONFIG_FLAG = ("--config", "YAML settings file (default ./config.yaml if present)")
_HOME_FLAG = ("--home", "folder for pulled and converted models")
_LOG_FLAG = ("--log-level", "critical, error, warning, info or debug")
SERVE_FLAGS = (
    _CONFIG_FLAG,
    ("--model", "HF model folder or .gguf file (default: the embedded model)"),
    ("--served-model-name", "model id to report and accept in requests"),
    ("--host", "address to listen on"),
    ("--port", "TCP port to listen on"),
    ("--device", "auto, cpu, cuda or cuda:N"),
    ("--dtype", "auto, float32, bfloat16 or float16"),
    ("--max-batch", "most sequences sharing one sweep"),
    ("--max-queue", "most requests waiting; more get HTTP 503"),
    ("--prefetch-depth", "layers read ahead of the one computing"),
    ("--max-sweep-tokens", "most tokens in one sweep; longer prompts are chunked"),
    ("--batch-wait", "seconds an idle engine waits for more arrivals, e.g. 0.01"),
    ("--max-memory", "bytes for weights and KV cache, e.g. 2GB (auto: half the free)"),
    ("--kv-memory", "bytes of KV cache (default: a quarter of --max-memory)"),
    ("--request-timeout", "seconds a request may take; 0: no limit"),
    ("--drain-timeout", "seconds running requests get to finish on SIGTERM"),
    # No flag for the keys themselves: a command line is visible to all users.
    ("--api-key-file", "file of API keys, one a line; requests must send one"),
    ("--cors-origins", "comma-separated origins browsers may call from"),
    ("--max-body-size", "largest request body, e.g. 4MB; more get HTTP 413"),
    _HOME_FLAG,
    _LOG_FLAG,
    ("--log-format", "text or json (one JSON object per line)"),
)
PULL_FLAGS = (_CONFIG_FLAG, _HOME_FLAG, _LOG_FLAG)


class PortUnavailable(Exception):
    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerstream", description="OpenAI-compatible server for big models."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the HTTP server")
    _add_flags(serve_parser, SERVE_FLAGS)
    pull_parser = commands.add_parser("pull", help="fetch the default model")
    _add_flags(pull_parser, PULL_FLAGS)
    # Listed for --help only; main() hands "bench ..." over before parsing.
    commands.add_parser("bench", help="measure against the anchors (bench --help)")
    return parser


def _add_flags(
    parser: argparse.ArgumentParser, flags: tuple[tuple[str, str], ...]
) -> None:
    # Values stay strings: the Settings model validates and converts them, so a
    # bad flag reads the same as a bad config entry.
    for flag, help_text in flags:
        parser.add_argument(flag, help=help_text, default=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # The benchmark parses its own flags. Imported here: it pulls in its
        # anchors, which serving does not need.
        from bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if key != "command"}
    command = serve if args.command == "serve" else pull
    try:
        return command(overrides)
    except ValidationError as exc:
        return _fail(_describe_invalid(exc), EXIT_BAD_SETTINGS)
    except SettingsError as exc:
        return _fail(str(exc), EXIT_BAD_SETTINGS)
    except yaml.YAMLError as exc:
        return _fail(
            _one_line(f"config file is not valid YAML: {exc}"), EXIT_BAD_SETTINGS
        )
    except (LayerstreamError, PortUnavailable) as exc:
        return _fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except StopRequested:
        return 0


def serve(overrides: dict[str, Any]) -> int:
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    # The port is claimed and answers (probes, 503s) while the model loads,
    # which can take minutes.
    with claim_port(settings.host, settings.port) as listener:
        server = make_server(app, settings)
        shutdown = Shutdown(app, server, settings.drain_timeout)
        http = threading.Thread(
            target=_serve_http,
            args=(server, listener, shutdown),
            name="layerstream-http",
        )
        shutdown.install()
        http.start()
        try:
            engine = open_engine(
                settings.model, engine_options(settings), worker_thread=False
            )
        except BaseException:
            # The load failed or a signal abandoned it: the HTTP side goes too.
            server.should_exit = True
            http.join()
            raise
        _run(app, engine, shutdown, settings)
        http.join()
    return 0


def _run(app: FastAPI, engine: Engine, shutdown: Shutdown, settings: Settings) -> None:
    # Logged only once the model opened, so that a start-up failure stays the
    # one line on stderr that names its cause.
    logger.info("settings: %s", settings.model_dump(mode="json"))
    shutdown.attach(engine)
    attach_engine(app, engine)
    logger.info("ready on http://%s:%d/v1", settings.host, settings.port)
    # The engine's loop takes the main thread (see Engine.run); the HTTP side,
    # which does no torch work, runs beside it.
    try:
        engine.run()
    finally:
        shutdown.stop_http()
        engine.shutdown()


def _serve_http(
    server: uvicorn.Server, listener: socket.socket, shutdown: Shutdown
) -> None:
    try:
        server.run(sockets=[listener])
    finally:
        # Without its HTTP side the engine has no one to serve.
        if shutdown.engine is not None:
            shutdown.engine.stop()


def pull(overrides: dict[str, Any]) -> int:
    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    # The layout the server on these settings converts for, so it converts nothing.
    print(pull_default_model(settings.home, store_blocking(engine_options(settings))))
    return 0


def claim_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restart reuse a port whose old connections linger in TIME_WAIT; a
    # port another process listens on still fails to bind.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise PortUnavailable(host, port, exc.strerror or str(exc)) from exc
    return listener


def make_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        # Its start-up lines would come before a failing model load's one line.
        log_level="debug" if settings.log_level == "debug" else "warning",
        access_log=False,  # the app logs one line per request itself
        timeout_graceful_shutdown=_GRACEFUL_S,
    )
    return uvicorn.Server(config)


def _describe_invalid(exc: ValidationError) -> str:
    problems = [_describe_problem(error) for error in exc.errors()]
    return "invalid setting " + "; ".join(problems)


# Settings whose values must not reach a terminal or a log, even when wrong.
_SECRET_SETTINGS = frozenset({"api_keys"})


def _describe_problem(error: ErrorDetails) -> str:
    name = ".".join(map(str, error["loc"]))
    reason = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"] and error["loc"][0] in _SECRET_SETTINGS:
        return f"{name}: {reason.split(':')[0]} (value not shown: a secret)"
    return f"{name}: {reason} (got {error['input']!r})"


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _fail(message: str, code: int) -> int:
    print(f"layerstream: error: {message}", file=sys.stderr)
    return code
