"""JointPSP and psp_loss under bf16 autocast, channels_last and torch.compile (CPU)."""

from __future__ import annotations

import pytest
import torch

from dynams_service import SlimCNN
from dynams_service.client import JointPSP, psp_loss


def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def joint_model(every: int = 1) -> JointPSP:
    torch.manual_seed(0)
    return JointPSP(SlimCNN(num_classes=10, in_channels=1, widths=(1.0, 0.25)), 0.25,
                    every=every)


def test_bf16_autocast_trains_both_widths_with_float32_loss_and_weights():
    joint, (x, y) = joint_model(), batch()
    weights = torch.linspace(0.5, 2.0, len(y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, psp = joint(x)
        loss = psp_loss(logits, psp, y, weights=weights)
    assert logits.dtype == psp.dtype == torch.bfloat16  # the matmuls and convs ran in bf16
    assert loss.dtype == torch.float32  # cross-entropy autocasts to float32
    loss.backward()
    grads = [p.grad for p in joint.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():  # close to the float32 loss
        reference = psp_loss(*joint(x), y, weights=weights)
    assert loss.item() == pytest.approx(reference.item(), rel=0.05)


def test_channels_last_gives_the_same_outputs():
    joint, (x, _) = joint_model(), batch()
    joint.eval()
    with torch.no_grad():
        plain = joint(x)
        joint = joint.to(memory_format=torch.channels_last)
        fast = joint(x.to(memory_format=torch.channels_last))
    for a, b in zip(plain, fast, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_compiled_joint_model_matches_eager_without_recompiling_every_step():
    """The step counter of ``every`` stays out of the graph: three graphs (the model, and
    the PSP step and the plain step after the counter), not one per step. ``aot_eager``
    traces what inductor compiles (Dynamo's graphs, AOTAutograd's backward) without its
    C++ code generation, a minute of CPU here; inductor gives the same three graphs."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager, compiled = joint_model(every=2), joint_model(every=2)
    run = torch.compile(compiled, backend="aot_eager")
    x, y = batch()
    for step in range(6):
        expected, got = eager(x), run(x)
        assert (got[1] is None) == (expected[1] is None) == (step % 2 == 1)
        torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-4)
        for model, out in ((eager, expected), (compiled, got)):
            psp_loss(*out, y).backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:  # the PSP's own BatchNorm: on PSP steps only
                        p -= 0.01 * p.grad
                        p.grad = None
    assert counters["stats"]["unique_graphs"] <= 3
