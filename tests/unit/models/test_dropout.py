import pytest
import torch

from features.models.dropout import ByteDropout
from features.models import sequence as SQ


def test_keeps_the_stated_share_and_the_expectation():
    torch.manual_seed(0)
    d = ByteDropout(0.2).train()
    x = torch.ones(400_000)
    y = d(x)
    kept = (y != 0).float().mean().item()
    assert d.threshold == 51 and kept == pytest.approx(205 / 256, abs=0.003)
    assert torch.unique(y).tolist() == pytest.approx([0.0, 256 / 205])
    assert y.mean().item() == pytest.approx(1.0, abs=0.005)  # unbiased


def test_masks_differ_between_calls_and_follow_the_seed():
    d = ByteDropout(0.5).train()
    x = torch.ones(3, 7, 11)  # not a multiple of 8 elements
    torch.manual_seed(1)
    a, b = d(x), d(x)
    torch.manual_seed(1)
    assert torch.equal(d(x), a) and not torch.equal(a, b) and a.shape == x.shape


def test_identity_in_eval_and_at_zero_and_bad_p_is_refused():
    x = torch.randn(5, 4)
    assert torch.equal(ByteDropout(0.3).eval()(x), x)
    assert torch.equal(ByteDropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        ByteDropout(1.0)


def test_gradient_flows_through_the_kept_elements_only():
    torch.manual_seed(2)
    x = torch.ones(64, requires_grad=True)
    y = ByteDropout(0.25).train()(x)
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0)


def test_the_behaviour_model_uses_it_for_every_dropout_but_attention_weights():
    m = SQ.SequenceModel(10, 8, SQ.SequenceParams(dim=16, heads=2, layers=2))
    drops = [mod for mod in m.modules() if isinstance(mod, torch.nn.Dropout)]
    assert not drops and sum(isinstance(mod, ByteDropout) for mod in m.modules()) == 1 + 3 * 2
