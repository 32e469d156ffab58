"""layerstream's HTTP side: an OpenAI-compatible API in front of the engine."""
