"""Scores as plug-ins: the built-ins on a trained proxy over real Fashion-MNIST (their
values and their sign convention: lower = keep first), and the registry's errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynams_service.core.data.shards import decode_samples, read_shards
from dynams_service.core.models.proxy import build_proxy, export_psp
from dynams_service.core.registry import UnknownName
from dynams_service.core.selection import scores as scores_module
from dynams_service.core.selection.margin import margins
from dynams_service.core.selection.scores import ScoringProxy, get_score, register_score, scores
from dynams_service.core.selection.scoring import score, score_batches
from dynams_service.core.selection.selection import select


@pytest.fixture(scope="module")
def data(small_shards, trained_model):
    """1000 real images, their labels, the trained model's width-0.25 proxy, and that
    proxy's features and logits computed directly."""
    uri, manifest = small_shards
    rows = read_shards(uri, [0], manifest=manifest)
    x = decode_samples(rows.samples, manifest)
    y = torch.from_numpy(rows.labels)
    proxy = build_proxy("fmnist-cnn", 0.25, export_psp(trained_model, 0.25))
    with torch.inference_mode():
        z = proxy.forward_features(x)
        logits = proxy(x)
    return x, y, proxy, z, logits


@pytest.fixture()
def registered():
    """Register test scores; they are removed again afterwards."""
    names = []

    def add(name, fn):
        register_score(name, fn)
        names.append(name)

    yield add
    for name in names:
        scores_module._SCORES._factories.pop(name)


def test_builtins_are_registered():
    assert {"distance", "signed", "loss", "el2n"} <= set(scores())
    assert scores_module.DEFAULT_SCORE == "distance"


@pytest.mark.parametrize("name", ["distance", "signed"])
def test_margin_scores_equal_core_margins(data, name):
    x, y, proxy, z, _ = data
    head = proxy.head.slice_state(1.0)
    with torch.inference_mode():
        expected = margins(z, head["weight"], head["bias"], y, name)
    got = score(proxy, x, y, score=name, batch_size=1000)
    assert torch.equal(got, expected)
    torch.testing.assert_close(score(proxy, x, y, score=name, batch_size=128), expected,
                               atol=1e-5, rtol=1e-5)


def test_distance_keeps_samples_nearest_a_boundary(data):
    x, y, proxy, _, logits = data
    s = score(proxy, x, score="distance")
    assert (s >= 0).all()
    top2 = logits.topk(2, dim=1).values
    gap = top2[:, 0] - top2[:, 1]
    kept = select(s, y, ratio=0.3)
    assert gap[kept].mean() < 0.5 * gap.mean()  # kept first: the least confident


def test_signed_is_negative_exactly_when_misclassified(data):
    x, y, proxy, _, logits = data
    s = score(proxy, x, y, score="signed")
    wrong = logits.argmax(1) != y
    assert 0 < int(wrong.sum()) < len(y)
    assert torch.equal(s < 0, wrong)


def test_loss_is_negated_cross_entropy(data):
    x, y, proxy, _, logits = data
    s = score(proxy, x, y, score="loss")
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(s, -ce, atol=1e-5, rtol=1e-5)
    assert (s <= 0).all()
    kept = torch.as_tensor(select(s, y, ratio=0.3))
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[kept] = False
    assert ce[kept].min() >= ce[rest].max()  # the hardest 30 %, by the proxy's loss


def test_el2n_is_negated_error_norm(data):
    x, y, proxy, _, logits = data
    s = score(proxy, x, y, score="el2n")
    p = torch.softmax(logits.double(), 1)
    p_true = p.gather(1, y[:, None]).squeeze(1)
    reference = ((1 - p_true) ** 2 + (p ** 2).sum(1) - p_true ** 2).sqrt()
    torch.testing.assert_close(s.double(), -reference, atol=1e-5, rtol=1e-5)
    assert (s <= 0).all() and (s >= -(2 ** 0.5)).all()
    wrong = logits.argmax(1) != y
    kept = torch.as_tensor(select(s, y, ratio=0.3))
    assert wrong[kept].float().mean() > 2 * wrong.float().mean()  # errors come first


@pytest.mark.parametrize("name", ["signed", "loss", "el2n"])
def test_label_scores_need_labels(data, name):
    x, _, proxy, _, _ = data
    with pytest.raises(ValueError, match=f"score '{name}' needs labels"):
        score(proxy, x[:10], score=name)


def test_label_scores_check_label_range(data):
    x, _, proxy, _, _ = data
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\]"):
        score(proxy, x[:2], torch.tensor([0, 10]), score="loss")


def test_scoring_proxy_at_a_width_of_the_full_model(data, trained_model):
    """A full model at width α gives its scores the sliced head: the same as its proxy."""
    x, y, proxy, _, logits = data
    view = ScoringProxy.of(trained_model, 0.25)
    assert view.num_classes == 10 and view.weight.shape == (10, proxy.head.in_features)
    with torch.inference_mode():
        torch.testing.assert_close(view.logits(x[:100]), logits[:100], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(score(trained_model, x, y, width=0.25, score="el2n"),
                               score(proxy, x, y, score="el2n"), atol=1e-4, rtol=1e-4)


def test_a_registered_score_is_used_by_name(data, registered):
    x, y, proxy, _, logits = data
    seen = []

    def true_logit(p: ScoringProxy, inputs, labels):
        seen.append((len(inputs), torch.is_inference_mode_enabled(), p.model.training))
        return p.logits(inputs).gather(1, labels[:, None]).squeeze(1)

    registered("test-true-logit", true_logit)
    assert get_score("test-true-logit") is true_logit
    got = score(proxy, x, y, score="test-true-logit", batch_size=400)
    torch.testing.assert_close(got, logits.gather(1, y[:, None]).squeeze(1),
                               atol=1e-5, rtol=1e-5)
    assert seen == [(400, True, False), (400, True, False), (200, True, False)]


def test_unknown_score_lists_the_known_ones(data):
    x, _, proxy, _, _ = data
    with pytest.raises(UnknownName, match=r"unknown score 'cosine'; registered: \[.*'el2n'"):
        score(proxy, x[:4], score="cosine")
    with pytest.raises(KeyError):
        get_score("cosine")


def test_registry_refuses_duplicates_bad_names_and_non_callables(registered):
    with pytest.raises(ValueError, match="score 'loss' is already registered"):
        register_score("loss", lambda p, x, y: x)
    with pytest.raises(ValueError, match="score name must be"):
        register_score("no spaces", lambda p, x, y: x)
    with pytest.raises(TypeError, match="must be callable"):
        register_score("test-not-callable", 3.0)
    registered("test-replace", lambda p, x, y: torch.zeros(len(x)))
    register_score("test-replace", lambda p, x, y: torch.ones(len(x)), replace=True)
    assert get_score("test-replace")(None, torch.zeros(3), None).tolist() == [1, 1, 1]


def test_score_of_the_wrong_shape_is_refused(data, registered):
    x, _, proxy, _, _ = data
    registered("test-per-logit", lambda p, inputs, labels: p.logits(inputs))
    with pytest.raises(ValueError, match=r"score 'test-per-logit' returned shape \(8, 10\) "
                                         r"for 8 inputs, expected \(8,\)"):
        score_batches(proxy, [(x[:8], None)], 8, score="test-per-logit")
