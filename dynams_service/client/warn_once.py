"""WarnOnce: the first of a kind of event is a warning, the later ones are logged at INFO
(a trainer sees that fallbacks or failed pushes began, without one line per epoch)."""

from __future__ import annotations

import logging

__all__ = ["WarnOnce"]


class WarnOnce:
    """Log to ``logger``: the first call at WARNING (with ``suffix``), later calls at INFO."""

    def __init__(self, logger: logging.Logger, suffix: str = "") -> None:
        self.logger = logger
        self.suffix = suffix
        self.warned = False

    def __call__(self, message: str) -> None:
        if self.warned:
            self.logger.info(message)
            return
        self.warned = True
        self.logger.warning("%s%s", message, self.suffix)
