"""Scores named on the wire: an operator's score loaded with ``dynams serve --models``
selects in the real scorer processes; unknown names are refused at CreateJob."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynams_service.client import SelectorClient, SelectorError, Status
from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.models.proxy import build_proxy, export_psp
from dynams_service.core.selection.scoring import score
from dynams_service.core.selection.selection import select

from .conftest import Selector, canonical_from_parts, gather, make_spec


def test_unknown_score_is_invalid_argument_naming_the_known_ones(local_server_factory,
                                                                 small_shards):
    client = SelectorClient(local_server_factory().address)
    with pytest.raises(SelectorError) as info:
        client.create_job(make_spec(small_shards, job_id="unknown-score", score="cosine"))
    assert info.value.status == Status.INVALID_ARGUMENT
    assert ("policy.score: unknown score 'cosine'; registered: "
            "['distance', 'el2n', 'loss', 'signed']") in info.value.details
    assert all(j.spec.job_id != "unknown-score" for j in client.list_jobs())


def test_operator_score_loads_with_models_flag_and_selects(tmp_path, ray_cluster,
                                                           small_shards, trained_model):
    """A score registered in the operator's module scores in the scorer processes too; the
    round keeps the 30 % whose true-class logit is lowest (global selection)."""
    selector = Selector(tmp_path / "state", "--models", "tests.service.score_plugin")
    try:
        client = SelectorClient(selector.address)
        with pytest.raises(SelectorError) as info:
            client.create_job(make_spec(small_shards, job_id="typo", score="true-logits"))
        assert info.value.status == Status.INVALID_ARGUMENT
        assert "'true-logit'" in info.value.details  # the operator's name is listed

        spec = make_spec(small_shards, job_id="custom-score", score="true-logit",
                         class_balance="global")
        job = client.create_job(spec)
        assert job.spec.policy.score == "true-logit"
        records = export_psp(trained_model, 0.25)
        client.push_weights(spec.job_id, epoch=1, version=1, records=records)
        headers, parts = zip(*gather(client, spec.job_id, 1, world_size=2), strict=True)
        chosen = np.sort(canonical_from_parts(list(parts), headers[0].global_count))

        uri, manifest = small_shards
        rows = read_shards(uri, manifest=manifest)
        x, y = decode_samples(rows.samples, manifest), torch.from_numpy(rows.labels)
        proxy = build_proxy("fmnist-cnn", 0.25, records)
        with torch.inference_mode():
            true_logit = torch.cat([proxy(x[s:s + 256]).gather(1, y[s:s + 256, None])
                                    for s in range(0, len(x), 256)]).squeeze(1)
        expected = select(true_logit.numpy(), rows.labels, ratio=0.3)
        assert len(chosen) == 1200
        assert np.array_equal(chosen, expected)
        by_margin = select(score(proxy, x).numpy(), rows.labels, ratio=0.3)
        assert not np.array_equal(chosen, by_margin)  # the name really chose the score
        client.close()
    finally:
        selector.stop()

