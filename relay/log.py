"""structlog set-up: JSON lines for machines, the console renderer on a TTY.

Context (``stream_id``, ``task_id``, ``job_id``) is bound with
``structlog.contextvars.bound_contextvars`` at the top of each unit of work and inherited
by the tasks it starts. Event names are short and dotted (``callback.rejected``) with
fields; values are never pasted into the text. Secrets are never passed to a logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LOG = structlog.get_logger("relay")


def configure(level: str = "info", fmt: Literal["auto", "json", "console"] = "auto") -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries log through stdlib logging; keep their warnings, drop their chatter.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
