"""The Ray cluster the selector's scorers run on (``dynams serve --ray-address``).

'auto' joins the cluster this machine belongs to and starts an embedded one if there is
none; 'local' always starts an embedded one; any other value is a cluster's address. An
embedded Ray ends with the server, however the server ends (NOTE [ lifeline ]), and its
dashboard listens on loopback only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from .lifeline import Lifeline

__all__ = ["RayConnection", "connect"]


@dataclass
class RayConnection:
    """A connection to Ray, and the lifeline of an embedded cluster."""

    dashboard_url: str  # "" when the cluster runs no dashboard
    lifeline: Lifeline | None = None

    def close(self) -> None:
        ray.shutdown()
        if self.lifeline is not None:
            self.lifeline.release()


def connect(address: str) -> RayConnection:
    """Join or start the cluster ``address`` names ('auto', 'local' or an address)."""
    if address == "auto":
        try:
            return _connected(ray.init(address="auto", logging_level=logging.WARNING))
        except ConnectionError:
            return _embedded()
    if address == "local":
        return _embedded()
    return _connected(ray.init(address=address, logging_level=logging.WARNING))


def _embedded() -> RayConnection:
    lifeline = Lifeline.start()  # before Ray starts: its helpers join the process group
    context = ray.init(address="local", dashboard_host="127.0.0.1",
                       logging_level=logging.WARNING)
    return _connected(context, lifeline)


def _connected(context, lifeline: Lifeline | None = None) -> RayConnection:
    dashboard = context.dashboard_url
    return RayConnection(f"http://{dashboard}" if dashboard else "", lifeline)
