"""Margins against a slow class-by-class reference, in both modes and the hard cases."""

from __future__ import annotations

import math

import pytest
import torch

from dynams_service import margins


def reference_margins(z, w, b, labels=None, mode="distance"):
    """Slow float64 reference: one sample and one class pair at a time."""
    z, w, b = z.double(), w.double(), b.double()
    out = []
    for i in range(z.shape[0]):
        logits = [float(w[k] @ z[i] + b[k]) for k in range(w.shape[0])]
        anchor = int(labels[i]) if mode == "signed" else max(range(len(logits)),
                                                             key=lambda k: (logits[k], -k))
        best = math.inf
        for k in range(w.shape[0]):
            if k == anchor:
                continue
            gap = logits[anchor] - logits[k]
            norm = float(torch.linalg.vector_norm(w[anchor] - w[k]))
            if mode == "distance":
                gap = abs(gap)
            if norm == 0:
                value = 0.0 if gap == 0 else math.inf
            else:
                value = gap / norm
            best = min(best, value)
        out.append(best)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("num_classes", [2, 3, 10])
@pytest.mark.parametrize("mode", ["distance", "signed"])
@pytest.mark.parametrize("seed", [0, 1])
def test_margins_match_reference(num_classes, mode, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(64, 16, generator=g)
    w = torch.randn(num_classes, 16, generator=g)
    b = torch.randn(num_classes, generator=g)
    y = torch.randint(0, num_classes, (64,), generator=g)
    got = margins(z, w, b, labels=y, mode=mode)
    assert got.dtype == torch.float32 and got.shape == (64,)
    torch.testing.assert_close(got.double(), reference_margins(z, w, b, y, mode),
                               rtol=1e-5, atol=1e-5)


def test_distance_is_nonnegative_and_signed_is_negative_when_misclassified():
    g = torch.Generator().manual_seed(3)
    z, w, b = torch.randn(200, 8, generator=g), torch.randn(5, 8, generator=g), torch.zeros(5)
    y = torch.randint(0, 5, (200,), generator=g)
    dist = margins(z, w, b)
    signed = margins(z, w, b, labels=y, mode="signed")
    assert (dist >= 0).all()
    wrong = (z @ w.T + b).argmax(1) != y
    assert wrong.any() and (~wrong).any()
    assert (signed[wrong] < 0).all() and (signed[~wrong] >= 0).all()
    # A correctly classified sample has the same margin in both modes.
    torch.testing.assert_close(signed[~wrong], dist[~wrong])


def test_two_class_margin_is_distance_to_the_single_hyperplane():
    w = torch.tensor([[1.0, 2.0], [-1.0, 0.0]])
    b = torch.tensor([0.5, -0.5])
    z = torch.tensor([[1.0, 1.0], [-3.0, 0.0]])
    # Boundary: (w0 - w1)·z + (b0 - b1) = 2 z0 + 2 z1 + 1 = 0, normal norm sqrt(8).
    expected = (2 * z[:, 0] + 2 * z[:, 1] + 1).abs() / math.sqrt(8)
    torch.testing.assert_close(margins(z, w, b), expected)


def test_nearest_boundary_is_not_the_runner_up_logit():
    w = torch.tensor([[10.0, 0.0], [0.0, 0.0], [9.9, 0.0]])
    b = torch.tensor([0.0, 9.0, 0.0])
    z = torch.tensor([[1.0, 0.0]])
    # logits 10.0, 9.0, 9.9: the runner-up logit is class 2 (gap 0.1, ‖w0 − w2‖ = 0.1 →
    # distance 1.0), but class 1's boundary is nearer (gap 1.0, ‖w0 − w1‖ = 10 → 0.1).
    got = margins(z, w, b)
    torch.testing.assert_close(got, torch.tensor([0.1]))
    torch.testing.assert_close(got.double(), reference_margins(z, w, b))


def test_ties_give_zero_margin_and_the_first_class():
    w = torch.eye(3)
    b = torch.zeros(3)
    z = torch.tensor([[2.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    got = margins(z, w, b)
    torch.testing.assert_close(got, torch.zeros(2))
    torch.testing.assert_close(got.double(), reference_margins(z, w, b))


def test_identical_weight_rows_have_no_boundary():
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([0.0, 0.5, 0.0])
    z = torch.tensor([[3.0, 0.0]])
    # Class pair (0, 1) never crosses; nearest real boundary is to class 2.
    got = margins(z, w, b)
    torch.testing.assert_close(got.double(), reference_margins(z, w, b))
    assert math.isfinite(got.item())


def test_many_classes_with_identical_rows_stay_exact():
    # Regression: above 25 classes cdist's matmul path gave identical rows a distance > 0.
    g = torch.Generator().manual_seed(9)
    w = torch.randn(100, 32, generator=g)
    w[7] = w[3]
    b = torch.randn(100, generator=g)
    z = torch.randn(50, 32, generator=g)
    torch.testing.assert_close(margins(z, w, b).double(), reference_margins(z, w, b),
                               rtol=1e-5, atol=1e-5)


def test_no_bias_equals_zero_bias():
    g = torch.Generator().manual_seed(5)
    z, w = torch.randn(10, 4, generator=g), torch.randn(3, 4, generator=g)
    torch.testing.assert_close(margins(z, w, None), margins(z, w, torch.zeros(3)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"features": torch.zeros(3)}, "features must be"),
        ({"weight": torch.zeros(3, 5)}, "weight must be"),
        ({"weight": torch.zeros(1, 4), "bias": torch.zeros(1)}, "at least 2 classes"),
        ({"bias": torch.zeros(4)}, "bias must be"),
        ({"mode": "signed"}, "needs labels"),
        ({"mode": "signed", "labels": torch.tensor([0, 1, 3])}, "labels must be in"),
        ({"mode": "signed", "labels": torch.tensor([0, 1])}, "labels must be"),
        ({"mode": "cosine"}, "mode must be one of"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"features": torch.zeros(3, 4), "weight": torch.zeros(3, 4), "bias": torch.zeros(3)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        margins(**args)
