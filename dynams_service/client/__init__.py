"""The trainer side: SelectorClient (and, next, DynaMSSampler and PSP training helpers)."""

from .client import SelectorClient, SelectorRpcError

__all__ = ["SelectorClient", "SelectorRpcError"]
