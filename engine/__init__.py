"""layerstream's engine: layer-streamed inference behind a single worker thread."""

from engine.engine import Engine
from engine.loader import open_engine
from engine.options import EngineOptions

__all__ = ["Engine", "EngineOptions", "open_engine"]
