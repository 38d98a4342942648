"""Quiet logs: one library message that does not describe `ssd`'s use dropped while a block runs, and
every other message still shown."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def without_message(logger_name: str, prefix: str):
    """While the block runs, drop the records of logger `logger_name` whose message starts with `prefix`."""
    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    logger = logging.getLogger(logger_name)
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
