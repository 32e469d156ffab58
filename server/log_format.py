"""Log set-up: plain text lines, or one JSON object per line for collectors."""

from __future__ import annotations

import json
import logging

from server.settings import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Time, level, logger and message, plus a record's ``fields`` if it has any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    handler = logging.StreamHandler()
    formatter = (
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # sse-starlette logs every chunk it sends at DEBUG: answers' text, for
    # every request, in a log that may be shared.
    quiet = max(logging.INFO, logging.getLevelNamesMapping()[level.upper()])
    logging.getLogger("sse_starlette").setLevel(quiet)
