"""The FastAPI application, built from settings and an already opened engine."""

from __future__ import annotations

from fastapi import FastAPI

from engine import Engine
from server.access_log import AccessLog
from server.errors import install_error_boundary
from server.routes import chat, health, models, page, stats
from server.served_model import ServedModel
from server.settings import Settings


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    app = FastAPI(title="layerstream")
    app.state.engine = engine
    app.state.served_model = ServedModel.of(settings, engine)

    for routes in (chat, models, health, stats, page):
        app.include_router(routes.router)
    install_error_boundary(app)
    # Added last so it wraps the error boundary and logs the status it chose.
    app.add_middleware(AccessLog)
    return app
