"""JSON-lines logging, configured once by each entry point."""

from __future__ import annotations

import logging
import sys
import time
from typing import Final

import msgspec

# Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD_ATTRS: Final = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
# Extras that are not JSON types (exceptions, paths) are logged by their repr.
_encoder: Final = msgspec.json.Encoder(enc_hook=repr)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode("utf-8", "replace")


def setup_logging(level: str = "info", *, json_lines: bool = True) -> None:
    """Install one stderr handler on the root logger; called by entry points only."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
