"""The trainer side: SelectorClient, SelectorJob, DynaMSSampler and the joint PSP loss."""

from .client import SelectorClient, SelectorRpcError
from .job import SelectorJob
from .joint_training import JointPSP, psp_loss
from .push import PushScheduler
from .sampler import DynaMSSampler, EpochSource, RoundFailedError

__all__ = ["SelectorClient", "SelectorRpcError", "SelectorJob", "DynaMSSampler", "EpochSource",
           "RoundFailedError", "PushScheduler", "JointPSP", "psp_loss"]
