"""The sampler inside each framework's own loader wrappers (their real classes, in this
process): kept in place it trains exactly its part; re-sharded or replaced it raises
``SamplerMisuseError`` with the fix at the first batch out of place."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from dynams_service.client import DynaMSSampler, SelectorClient, SelectorJob, WithIndices
from dynams_service.client.batch_audit import SamplerMisuseError
from tests.service.conftest import make_spec

N, BATCH = 4000, 100


@pytest.fixture()
def job(local_server_factory, small_shards):
    server = local_server_factory()
    client = SelectorClient(server.address, timeout=10, retries=1)
    yield SelectorJob.create(client, make_spec(small_shards))
    client.close()


def epoch_sampler(job, rank: int, shard: bool = True) -> DynaMSSampler:
    sampler = DynaMSSampler(N, job, rank=rank, world_size=2, shard=shard)
    sampler.set_epoch(0)
    return sampler


def trained(sampler: DynaMSSampler, batches) -> list[int]:
    """Check and collect every batch (of dataset indices) a loader yields."""
    seen = []
    for batch in batches:
        sampler.check_batch(batch)
        seen += list(batch)
    return seen


def test_a_plain_loader_trains_exactly_the_ranks_part(job):
    for rank in (0, 1):
        with epoch_sampler(job, rank) as sampler:
            loader = DataLoader(WithIndices(range(N)), batch_size=BATCH, sampler=sampler)
            seen = trained(sampler, (idx.tolist() for _, idx in loader))
            whole = job.client.get_selection(job.job_id, 0, rank, 2)
            assert seen == whole.indices.tolist() and len(seen) == len(sampler) == 2000
    assert isinstance(sampler, DistributedSampler)  # what Lightning and Ray Train look for


def test_lightnings_wrapper_re_sharding_the_sampler_is_caught(job):
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    with epoch_sampler(job, 1) as sampler:
        wrapped = DistributedSamplerWrapper(sampler, num_replicas=2, rank=1, shuffle=False)
        batches = BatchSampler(wrapped, BATCH, drop_last=False)
        with pytest.raises(SamplerMisuseError, match="re-shards") as caught:
            trained(sampler, batches)
        assert "after 0 samples" in str(caught.value)  # at the first batch


def test_a_replacing_distributed_sampler_is_caught(job):
    """What Ray Train's prepare_data_loader puts in place of a non-DistributedSampler."""
    with epoch_sampler(job, 0) as sampler:
        iter(sampler)  # the user's sampler was iterated (set up), then replaced
        replaced = DistributedSampler(range(N), num_replicas=2, rank=0, shuffle=False)
        with pytest.raises(SamplerMisuseError, match="replaced|re-shards"):
            trained(sampler, BatchSampler(replaced, BATCH, drop_last=False))


def test_accelerate_dealing_a_sharded_sampler_is_caught(job):
    from accelerate.data_loader import BatchSamplerShard

    for rank, caught_at in ((0, 1), (1, 0)):
        with epoch_sampler(job, rank) as sampler:
            dealt = BatchSamplerShard(BatchSampler(sampler, BATCH, drop_last=False), 2, rank)
            checked = []
            with pytest.raises(SamplerMisuseError, match="shard=False"):
                for batch in dealt:
                    sampler.check_batch(batch)
                    checked.append(batch)
            assert len(checked) == caught_at


def test_whole_mode_under_accelerate_trains_every_batch_once(job):
    from accelerate.data_loader import BatchSamplerShard

    per_rank = []
    for rank in (0, 1):
        with epoch_sampler(job, rank, shard=False) as sampler:
            assert len(sampler) == N  # the whole list; Accelerate deals 20 of its 40 batches
            assert sampler.total_steps(BATCH) == 20 + 3 * 6  # then 12 of 1200 per epoch, 6 each
            dealt = BatchSamplerShard(BatchSampler(sampler, BATCH, drop_last=False), 2, rank)
            per_rank.append(trained(sampler, dealt))
    whole = job.client.get_selection(job.job_id, 0, 0, 1).indices
    assert sorted(per_rank[0] + per_rank[1]) == sorted(whole.tolist())
    for rank, seen in enumerate(per_rank):  # Accelerate's deal: batches r, r + 2, ...
        expected = np.concatenate([whole[b:b + BATCH] for b in range(rank * BATCH, N, 2 * BATCH)])
        assert seen == expected.tolist()


def test_whole_mode_without_a_dealing_framework_is_caught(job):
    with epoch_sampler(job, 1, shard=False) as sampler, \
            pytest.raises(SamplerMisuseError, match="Use shard=True"):
        trained(sampler, BatchSampler(sampler, BATCH, drop_last=False))


def test_check_batch_before_iterating_is_an_error(job):
    with epoch_sampler(job, 0) as sampler, pytest.raises(RuntimeError, match="before iterating"):
        sampler.check_batch([1, 2])
