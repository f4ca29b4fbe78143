import pytest
import torch
from torch import nn

from taggnn.nn import TokenTransformer
from taggnn.nn import dropout as fast
from taggnn.nn.encoder import TokenEncoderLayer


def test_identity_in_eval_and_at_zero():
    x = torch.randn(4, 8)
    assert fast.dropout(x, 0.3, training=False) is x
    assert torch.equal(fast.dropout(x, 0.0, training=True), x)


def test_keep_rate_and_scale():
    torch.manual_seed(0)
    p, n = 0.1, 1_000_000
    out = fast.dropout(torch.ones(n), p)
    dropped = (out == 0).double().mean().item()
    # binomial standard deviation sqrt(p (1 - p) / n) = 3e-4: 5 sigma
    assert abs(dropped - p) < 1.5e-3
    p_q = round(p * 2**16) / 2**16
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p_q)))
    assert abs(out.double().mean().item() - 1.0) < 2e-3  # unbiased


def test_quantised_probability_is_close_to_p():
    for p in (0.01, 0.1, 0.25, 0.5, 0.9):
        assert abs(fast._keep_threshold(p) / 2**16 - p) <= 2**-17


def test_governed_by_torch_generator():
    x = torch.randn(64, 32)
    torch.manual_seed(5)
    a, b = fast.dropout(x, 0.5), fast.dropout(x, 0.5)
    torch.manual_seed(5)
    assert torch.equal(fast.dropout(x, 0.5), a)
    assert not torch.equal(a, b)  # successive calls draw new masks
    # one call consumes exactly one draw of torch's CPU generator (so checkpointed RNG states resume it)
    torch.manual_seed(7)
    fast.dropout(x, 0.5)
    after_call = torch.get_rng_state()
    torch.manual_seed(7)
    torch.randint(0, 2**63 - 1, (), dtype=torch.int64)
    assert torch.equal(after_call, torch.get_rng_state())


def test_gradient_is_the_mask():
    x = torch.randn(128, 16, requires_grad=True)
    torch.manual_seed(1)
    out = fast.dropout(x, 0.3)
    out.sum().backward()
    expected = torch.where(out != 0, torch.full_like(x, 1 / (1 - round(0.3 * 2**16) / 2**16)), torch.zeros_like(x))
    assert torch.allclose(x.grad, expected)


def test_reduced_precision_keeps_dtype_and_mean():
    torch.manual_seed(0)
    x = torch.ones(1_000_000, dtype=torch.bfloat16)
    out = fast.dropout(x, 0.1)
    assert out.dtype == torch.bfloat16
    scale = 1 / (1 - round(0.1 * 2**16) / 2**16)
    assert torch.equal(out[out != 0], torch.full_like(out[out != 0], scale))  # x * scale, rounded once
    assert abs(out.double().mean().item() - float(torch.tensor(scale, dtype=torch.bfloat16)) * 0.9) < 2e-3


def test_inplace():
    x = torch.ones(1000)
    out = fast.dropout(x, 0.5, inplace=True)
    assert out is x and (x == 0).any()


def test_falls_back_to_pytorch():
    assert not fast.uses_fast_path(torch.ones(3, device="meta"), 0.1, True)
    assert not fast.uses_fast_path(torch.ones(3), 0.1, False)
    assert not fast.uses_fast_path(torch.ones(3), 1.0, True)  # p = 1: PyTorch zeros everything
    assert not fast.uses_fast_path(torch.ones(3), 1e-7, True)  # below the 16-bit resolution
    assert not fast.uses_fast_path(torch.ones(3, dtype=torch.long), 0.1, True)
    assert torch.equal(fast.dropout(torch.ones(5), 1.0), torch.zeros(5))
    with pytest.raises(ValueError, match=r"\[0, 1\], got 1.5"):
        fast.dropout(torch.ones(2), 1.5)


def test_module_is_a_torch_dropout():
    module = fast.Dropout(0.2)
    assert isinstance(module, nn.Dropout) and module.p == 0.2 and not module.state_dict()
    assert repr(module) == "Dropout(p=0.2, inplace=False)"
    x = torch.randn(10)
    assert module.eval()(x) is x


@pytest.mark.parametrize("norm_first, layer_scale", [(True, None), (False, None), (True, 0.5)])
def test_layer_with_keep_all_masks_equals_pytorch(monkeypatch, norm_first, layer_scale):
    """The explicit attention of the training path is PyTorch's attention: with every mask
    keeping everything, training mode equals evaluation mode (outputs and gradients)."""
    torch.manual_seed(0)
    model = TokenTransformer(32, num_layers=2, num_heads=4, ffn_dim=64, dropout=0.2, norm_first=norm_first,
                             layer_scale=layer_scale)
    x = torch.randn(3, 10, 32, requires_grad=True)
    reference = model.eval()(x)
    (reference ** 2).sum().backward()
    grad_reference, x.grad = x.grad.clone(), None
    weight_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    calls = []

    def keep_all(shape, p):
        calls.append(tuple(shape))
        return torch.ones(shape, dtype=torch.bool), 1.0

    monkeypatch.setattr(fast, "keep_mask", keep_all)
    out = model.train()(x)
    (out ** 2).sum().backward()
    assert (3, 4, 10, 10) in calls and len(calls) == 8  # attention weights + 3 dropouts per layer
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, grad_reference, atol=1e-5, rtol=1e-5)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, weight_grads[name], atol=1e-5, rtol=1e-5)


def test_switch_off_gives_pytorch_layer_exactly():
    torch.manual_seed(0)
    ours = TokenEncoderLayer(32, 4, 64, 0.2, batch_first=True, norm_first=True, fast_cpu_dropout=False)
    theirs = nn.TransformerEncoderLayer(32, 4, 64, 0.2, batch_first=True, norm_first=True)
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 6, 32)
    torch.manual_seed(3)
    a = ours.train()(x)
    torch.manual_seed(3)
    assert torch.equal(a, theirs.train()(x))


def test_training_masks_drop_and_are_reproducible():
    model = TokenTransformer(32, num_layers=1, num_heads=4, ffn_dim=64, dropout=0.5).train()
    x = torch.randn(2, 6, 32)
    torch.manual_seed(11)
    a = model(x)
    torch.manual_seed(11)
    assert torch.equal(model(x), a)
    assert not torch.allclose(a, model.eval()(x))
