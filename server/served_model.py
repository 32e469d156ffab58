"""The model this server answers for: its public id and the names it accepts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine import Engine
from server.exceptions import ModelNotFound
from server.schemas.model_list import ModelCard
from server.settings import Settings


@dataclass(frozen=True)
class ServedModel:
    id: str
    aliases: frozenset[str]
    created: int
    context_length: int
    residency: dict[str, object]

    @classmethod
    def of(cls, settings: Settings, engine: Engine) -> ServedModel:
        names = {engine.model_id}
        if settings.model:
            # Users naturally type the file or folder they started the server with.
            path = Path(settings.model)
            names |= {settings.model, path.name, path.stem}
        served_id = settings.served_model_name or engine.model_id
        aliases = frozenset(names - {served_id})
        return cls(
            served_id, aliases, engine.created, engine.context_length, engine.plan
        )

    def require(self, name: str) -> None:
        if name != self.id and name not in self.aliases:
            raise ModelNotFound(name, self.id)

    @property
    def card(self) -> ModelCard:
        return ModelCard(
            id=self.id,
            created=self.created,
            context_length=self.context_length,
            residency=self.residency,
        )
