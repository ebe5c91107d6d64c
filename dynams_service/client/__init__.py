"""The trainer side: SelectorClient, DynaMSSampler and the joint PSP training helpers."""

from .client import SelectorClient, SelectorRpcError
from .joint_training import JointPSP, psp_loss
from .sampler import DynaMSSampler, EpochSource

__all__ = ["SelectorClient", "SelectorRpcError", "DynaMSSampler", "EpochSource", "JointPSP",
           "psp_loss"]
