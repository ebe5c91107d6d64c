"""Client fixtures reuse the selector's (Ray cluster, servers, small shards)."""

from tests.service.conftest import (  # noqa: F401
    gather,
    ray_cluster,
    server_factory,
    small_shards,
    trained_model,
)
