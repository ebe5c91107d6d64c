"""The joint PSP loss: one forward for both widths, optional batch fraction, distillation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynams_service import SlimCNN
from dynams_service.client import JointPSP, psp_loss


def test_joint_forward_and_loss():
    torch.manual_seed(0)
    model = SlimCNN(widths=(1.0, 0.25)).eval()
    x, y = torch.randn(10, 1, 28, 28), torch.randint(0, 10, (10,))
    assert JointPSP(model, 0.25).batch_fraction == 0.5  # the quality benchmark's choice
    logits, psp_logits = JointPSP(model, 0.25, batch_fraction=1.0)(x)
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(psp_logits, model(x, 0.25))
    expected = F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(psp_logits, y)
    torch.testing.assert_close(psp_loss(logits, psp_logits, y, lam=0.5), expected)


def test_batch_fraction_trains_the_psp_on_the_leading_rows():
    torch.manual_seed(0)
    model = SlimCNN(widths=(1.0, 0.25)).eval()
    x, y = torch.randn(10, 1, 28, 28), torch.randint(0, 10, (10,))
    logits, psp_logits = JointPSP(model, 0.25, batch_fraction=0.3)(x)
    assert logits.shape == (10, 10) and psp_logits.shape == (3, 10)
    expected = F.cross_entropy(logits, y) + F.cross_entropy(psp_logits, y[:3])
    torch.testing.assert_close(psp_loss(logits, psp_logits, y), expected)


def test_distillation_and_validation():
    logits, psp_logits = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    distilled = psp_loss(logits, psp_logits, y, distill=True, temperature=2.0)
    plain = psp_loss(logits, psp_logits, y)
    assert distilled.item() != pytest.approx(plain.item())
    assert psp_loss(logits, logits.clone(), y, lam=1.0, distill=True).item() == pytest.approx(
        F.cross_entropy(logits, y).item(), abs=1e-5)
    with pytest.raises(ValueError, match="lam must be >= 0"):
        psp_loss(logits, psp_logits, y, lam=-1)
    with pytest.raises(ValueError, match="batch_fraction must be in"):
        JointPSP(SlimCNN(widths=(1.0, 0.25)), 0.25, batch_fraction=0)
    with pytest.raises(ValueError, match="width 0.5 is not one"):
        JointPSP(SlimCNN(widths=(1.0, 0.25)), 0.5)


def test_every_kth_training_step_runs_the_psp():
    torch.manual_seed(0)
    model = SlimCNN(widths=(1.0, 0.25))
    joint = JointPSP(model, 0.25, every=3).train()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    got = [joint(x)[1] is not None for _ in range(7)]
    assert got == [True, False, False, True, False, False, True]
    logits, skipped = joint(x)
    assert skipped is None
    torch.testing.assert_close(psp_loss(logits, skipped, y), F.cross_entropy(logits, y))
    assert joint.eval()(x)[1] is not None  # evaluation always has both
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        JointPSP(model, 0.25, every=0)
