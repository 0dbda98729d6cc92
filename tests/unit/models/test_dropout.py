import pytest
import torch

from features.models import sequence as SQ
from features.models.dropout import ByteDropout, ByteDropoutAttention


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


def test_the_behaviour_model_uses_it_for_every_dropout():
    m = SQ.SequenceModel(10, 8, SQ.SequenceParams(dim=16, heads=2, layers=2))
    drops = [mod for mod in m.modules() if isinstance(mod, torch.nn.Dropout)]
    assert not drops and sum(isinstance(mod, ByteDropout) for mod in m.modules()) == 1 + 4 * 2


def test_attention_is_torchs_without_dropout_and_in_eval():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 16)
    causal = torch.triu(torch.ones(10, 10, dtype=torch.bool), 1)
    additive = torch.zeros(10, 10).masked_fill(causal, float("-inf"))  # how nn.TransformerEncoder passes it
    ours = ByteDropoutAttention(16, 2, 0.0).train()
    for mask, is_causal in ((additive, True), (causal, True), (None, True), (None, False)):
        got = ours(x, x, x, attn_mask=mask, need_weights=False, is_causal=is_causal)[0]
        want = torch.nn.MultiheadAttention.forward(ours, x, x, x, attn_mask=mask if mask is not None or not is_causal
                                                   else causal, need_weights=False)[0]
        assert torch.allclose(got, want, atol=1e-6)
    drop = ByteDropoutAttention(16, 2, 0.5)
    drop.load_state_dict(ours.state_dict())  # torch's parameter names
    assert torch.allclose(drop.eval()(x, x, x, attn_mask=additive, need_weights=False)[0],
                          ours(x, x, x, attn_mask=additive, need_weights=False)[0], atol=1e-6)
    torch.manual_seed(3)
    a = drop.train()(x, x, x, attn_mask=additive, need_weights=False)[0]
    assert not torch.allclose(a, ours(x, x, x, attn_mask=additive, need_weights=False)[0])  # weights dropped
