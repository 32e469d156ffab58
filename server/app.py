"""The FastAPI application, built from settings; the engine joins once loaded."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from engine import Engine
from engine.residency import parse_bytes
from server.access_log import AccessLog
from server.auth import ApiKeyCheck, api_keys_of
from server.body_limit import BodyLimit
from server.errors import install_error_boundary
from server.lifecycle import Lifecycle, Phase, ReadinessGate
from server.metrics import Metrics, RequestMetrics
from server.routes import (
    chat,
    completions,
    embeddings,
    health,
    metrics,
    models,
    page,
    stats,
    tokenize,
)
from server.served_model import ServedModel
from server.settings import Settings

_ROUTES = (
    chat,
    completions,
    embeddings,
    tokenize,
    models,
    health,
    stats,
    metrics,
    page,
)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Without an engine the app answers probes and 503s until ``attach_engine``."""
    app = FastAPI(title="layerstream")
    app.state.settings = settings
    app.state.lifecycle = Lifecycle()
    app.state.metrics = Metrics()
    app.state.engine = None
    app.state.served_model = None

    for routes in _ROUTES:
        app.include_router(routes.router)
    install_error_boundary(app)
    _add_middleware(app, settings)
    if engine is not None:
        attach_engine(app, engine)
    return app


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    # Each one added wraps the ones before: the last listed sees a request first.
    app.add_middleware(ReadinessGate)
    app.add_middleware(BodyLimit, max_bytes=parse_bytes(settings.max_body_size))
    app.add_middleware(ApiKeyCheck, keys=api_keys_of(settings))
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    # Logs the status chosen by everything inside it, the error boundary included.
    app.add_middleware(AccessLog)
    if settings.cors_origins:
        # Outermost, so that refusals (401, 413) carry the headers a browser needs.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )


def attach_engine(app: FastAPI, engine: Engine) -> None:
    """Serves with the loaded engine from now on."""
    app.state.engine = engine
    app.state.served_model = ServedModel.of(app.state.settings, engine)
    app.state.metrics.watch(engine)
    app.state.lifecycle.phase = Phase.READY
