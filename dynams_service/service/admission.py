"""Admission of a new job against the operator's ``Limits``: counts, resources, memory.

Pure functions over the spec and manifest; the coordinator calls them before it reserves
anything, so a refused job costs no scorer, no placement and no state.
"""

from __future__ import annotations

import math

from ..core.data.shards import DatasetManifest, dataset_decoder
from ..core.job import JobSpec
from .errors import ResourceExhausted
from .limits import Limits

__all__ = ["SCORER_PROCESS_BYTES", "check_job_count", "check_resources",
           "estimated_memory", "check_memory"]

# A scorer is a Ray worker process that imports torch: ≈470 MB measured on CPU even for
# a 0-CPU job, so each one is charged this much on top of the rows it holds.
SCORER_PROCESS_BYTES = 512 * 1024 * 1024


def check_job_count(held: int, limits: Limits) -> None:
    """Refuse a new job when ``held`` jobs (live and being created) reach ``max_jobs``."""
    if held >= limits.max_jobs:
        raise ResourceExhausted(
            f"the selector holds {held} jobs, its limit (--max-jobs) is {limits.max_jobs}; "
            "delete a finished job first")


def check_resources(spec: JobSpec, limits: Limits) -> None:
    """Refuse a job asking for more scorers, CPUs or GPUs than one job may have."""
    res = spec.resources
    if res.num_scorers > limits.max_scorers_per_job:
        raise ResourceExhausted(
            f"num_scorers {res.num_scorers} exceeds this selector's limit of "
            f"{limits.max_scorers_per_job} per job (--max-scorers-per-job)")
    cpus, gpus = res.num_scorers * res.num_cpus, res.num_scorers * res.num_gpus
    if limits.max_cpus_per_job is not None and cpus > limits.max_cpus_per_job:
        raise ResourceExhausted(
            f"the job asks for {cpus:g} CPUs (num_scorers x num_cpus), this selector's "
            f"limit is {limits.max_cpus_per_job:g} per job (--max-cpus-per-job)")
    if limits.max_gpus_per_job is not None and gpus > limits.max_gpus_per_job:
        raise ResourceExhausted(
            f"the job asks for {gpus:g} GPUs (num_scorers x num_gpus), this selector's "
            f"limit is {limits.max_gpus_per_job:g} per job (--max-gpus-per-job)")


def estimated_memory(spec: JobSpec, manifest: DatasetManifest) -> int:
    """Upper estimate of a job's memory, bytes: its scorer processes plus the decoded rows
    they cache (at most ``cache_bytes`` each; rows that stream through are bounded and
    counted in the process)."""
    try:
        row = dataset_decoder(manifest).row_bytes
    except (KeyError, ValueError):  # refused elsewhere; estimate as float32
        row = math.prod(manifest.sample_shape) * 4
    res = spec.resources
    cached = min(res.num_scorers * res.cache_bytes, manifest.num_samples * row)
    return res.num_scorers * SCORER_PROCESS_BYTES + cached


def check_memory(spec: JobSpec, manifest: DatasetManifest, limits: Limits) -> None:
    """Refuse a job whose estimated memory exceeds ``max_memory_per_job``."""
    if limits.max_memory_per_job is None:
        return
    need = estimated_memory(spec, manifest)
    if need > limits.max_memory_per_job:
        raise ResourceExhausted(
            f"the job needs about {need / 2**30:.2f} GiB ({spec.resources.num_scorers} "
            f"scorer processes and the decoded rows they cache), this selector's "
            f"limit is {limits.max_memory_per_job / 2**30:.2f} GiB per job "
            "(--max-memory-per-job); use fewer scorers or a smaller cache_bytes")
