"""structlog set-up: JSON lines when stderr is not a terminal, readable lines when it is.

structlog (and the asyncio it pulls in) is the largest part of a short command's start-up,
and `efird vars` or `efird ctl` usually log nothing. So `configure` only records the
settings until structlog is imported, and library modules take their logger from
`get_logger`, which imports and configures structlog on its first use.
"""

from __future__ import annotations

import sys
from typing import Any

_pending: dict[str, Any] | None = None


def configure(level: str = "info", *, json: bool | None = None, **context: Any) -> None:
    """Configure efird's logging once per process; `context` is bound to every line."""
    global _pending
    _pending = {"level": level, "json": json, "context": context}
    if "structlog" in sys.modules:
        _apply()


def _apply() -> None:
    global _pending
    settings, _pending = _pending, None
    if settings is None:
        return
    import logging

    import structlog

    json = settings["json"]
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[settings["level"].upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    if settings["context"]:
        structlog.contextvars.bind_contextvars(**settings["context"])


class _LazyLogger:
    """A structlog logger that comes into being on its first call."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            import structlog

            _apply()
            self._logger = structlog.get_logger(self._name)
        return getattr(self._logger, attr)


def get_logger(name: str) -> Any:
    return _LazyLogger(name)


def bind_context(**context: Any) -> None:
    """Bind context to every later log line (configuring structlog first if pending)."""
    import structlog

    _apply()
    structlog.contextvars.bind_contextvars(**context)


class Throttle:
    """At most one log line per key and window, so a hostile guest cannot flood the log:
    `admit(key)` says whether to log now and, when it does, how many lines of that key
    were held back since the last one."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._last: dict[object, float] = {}
        self._held: dict[object, int] = {}

    def admit(self, key: object) -> int | None:
        """None: stay quiet. An int: log now, mentioning that many held-back lines."""
        import time

        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        if len(self._last) > 1024:  # keys come from a bounded set; never grow without end
            self._last.clear()
        self._last[key] = now
        return self._held.pop(key, 0)
