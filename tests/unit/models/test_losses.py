"""The fused full-softmax cross-entropy the behaviour model trains with: the same loss and the
same gradients as autograd's cross_entropy over the whole catalog, whatever the chunking."""

from __future__ import annotations

import pytest
import torch

from features.models.losses import full_softmax_ce


def reference(h: torch.Tensor, E: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(h @ E.T, y)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1024])
def test_loss_and_gradients_match_autograd(chunk):
    g = torch.Generator().manual_seed(0)
    h = (3 * torch.randn(50, 16, generator=g, dtype=torch.float64)).requires_grad_()
    E = torch.randn(40, 16, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.randint(0, 40, (50,), generator=g)
    y[:5] = y[0]  # repeated targets accumulate into one row of E's gradient
    loss = full_softmax_ce(h, E, y, chunk=chunk)
    (2.5 * loss).backward()  # an upstream gradient other than 1 scales both
    got = (loss.detach(), h.grad.clone(), E.grad.clone())
    h.grad = E.grad = None
    want = reference(h, E, y)
    (2.5 * want).backward()
    torch.testing.assert_close(got[0], want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], h.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[2], E.grad, rtol=1e-10, atol=1e-12)


def test_large_logits_stay_finite_and_gradients_reach_the_parameters_behind_E():
    """Logits in the thousands (exp overflows without the row max) and E built from parameters,
    as the model's items() builds it from the adapter and the ID table."""
    torch.manual_seed(1)
    ids = torch.nn.Embedding(30, 8)
    adapter = torch.nn.Linear(5, 8, bias=False)
    text = torch.randn(30, 5)
    h = (100 * torch.randn(20, 8)).requires_grad_()
    y = torch.randint(0, 30, (20,))
    loss = full_softmax_ce(h, adapter(text) + ids.weight, y, chunk=6)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    ref_ids, ref_adapter = ids.weight.grad.clone(), adapter.weight.grad.clone()
    ids.zero_grad(), adapter.zero_grad()
    reference(h.detach(), adapter(text) + ids.weight, y).backward()
    torch.testing.assert_close(ref_ids, ids.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ref_adapter, adapter.weight.grad, rtol=1e-4, atol=1e-4)


def test_bad_shapes_name_the_argument():
    h, E = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match=r"h \(4, 3\) and E"):
        full_softmax_ce(torch.randn(4, 3), E, torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"y \(3,\) must be \(4,\)"):
        full_softmax_ce(h, E, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        full_softmax_ce(h, E, torch.zeros(4, dtype=torch.int64), chunk=0)
