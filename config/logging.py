"""Structured logging set-up shared by every console script.

Events have stable names (``study_analyzed``, ``ct_series_read``) and carry ids
as keys. Patient names, patient IDs, birth dates and note text never go into
a log line: callers pass UIDs and job ids only.
"""

from __future__ import annotations

import logging
import sys

import structlog


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    # Look sys.stderr up per logger, so a later redirection (pytest's capture,
    # a daemon closing its terminal) is honoured.
    return structlog.PrintLogger(file=sys.stderr)


# Arguments of the last configure_logging call in this process, for child processes.
_current: tuple[str, bool] = ("INFO", False)


def current_logging() -> tuple[str, bool]:
    """Return the (level, json) this process logs with, to configure a spawned child alike.

    A process started with the ``spawn`` method does not inherit the
    configuration: pass ``initializer=configure_logging`` and these as
    ``initargs`` to its pool.
    """
    return _current


def configure_logging(level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog and the standard library logger.

    Parameters
    ----------
    level
        Minimum level name (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``).
    json
        Render JSON lines. ``None`` chooses JSON when stderr is not a terminal,
        as under systemd or in CI.
    """
    if json is None:
        json = not sys.stderr.isatty()
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"invalid log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    renderer = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    global _current
    _current = (level, json)
