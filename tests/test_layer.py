"""The FFF layer's math: hard forward against a naive tree walk, soft -> hard as T -> 0, hardening loss."""
import math

import pytest
import torch

from fffconvert.layer import ACTIVATIONS, FFF, default_leaf_width


def random_layer(H, D, L, act="gelu", seed=0):
    torch.manual_seed(seed)
    layer = FFF(H, D, L, act)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    return layer


def naive_forward(layer: FFF, x):
    """One token at a time, one node at a time: the definition, with no vectorization."""
    out = []
    for t in x:
        n = 0
        for _ in range(layer.depth):
            n = 2 * n + (2 if float(layer.node_weight[n] @ t + layer.node_bias[n]) > 0 else 1)
        k = n - (2**layer.depth - 1)
        y = layer.leaf_bias[k] + layer.out_bias
        for j in range(layer.leaf_width):
            y = y + ACTIVATIONS[layer.activation](layer.weight[k, j] @ t + layer.bias[k, j]) * layer.w2[k, j]
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("H,D,L,N", [(8, 1, 1, 5), (16, 4, 3, 33), (12, 6, 2, 17)])
def test_hard_forward_matches_naive_walk(act, H, D, L, N):
    layer = random_layer(H, D, L, act)
    x = torch.randn(N, H)
    with torch.no_grad():
        torch.testing.assert_close(layer.hard_forward(x), naive_forward(layer, x), rtol=1e-5, atol=1e-5)


def test_hard_forward_keeps_leading_shape():
    layer = random_layer(16, 3, 2)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer.hard_forward(x), layer.hard_forward(x.reshape(10, 16)).reshape(2, 5, 16))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
@pytest.mark.parametrize("H,D,L,N", [(16, 6, 3, 37), (24, 7, 1, 101), (8, 2, 5, 9)])
def test_masked_forward_equals_hard_forward_with_gradients(device, H, D, L, N):
    """The training forward on a GPU (masked) against the gathering one: outputs and every gradient."""
    layer = random_layer(H, D, L, seed=H + D).to(device)
    x = torch.randn(N, H, device=device, requires_grad=True)
    grads = []
    for forward in (layer.masked_forward, layer.hard_forward):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        y = forward(x)
        (y * torch.linspace(-1, 1, H, device=device)).sum().backward()
        grads.append((y.detach(), x.grad.clone(), *[p.grad.clone() for p in (layer.weight, layer.bias, layer.w2, layer.leaf_bias)]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    layer.train()  # the training forward on this device (masked on a GPU but for (16, 6, 3): 192 neurons > 8 H)
    torch.testing.assert_close(layer(x), grads[1][0], rtol=1e-5, atol=1e-5)


def test_soft_forward_tends_to_hard_forward():
    layer = random_layer(16, 5, 2)
    x = torch.randn(200, 16)
    with torch.no_grad():
        z = x @ layer.node_weight.t() + layer.node_bias
        clear = (z.abs() > 1e-2).all(1)  # tokens with no decision on a knife edge
        assert clear.sum() > 100
        soft, hard = layer.soft_forward(x, temperature=1e-5), layer.hard_forward(x)
        torch.testing.assert_close(soft[clear], hard[clear], rtol=1e-4, atol=1e-4)
        # far from T -> 0 the two differ: the test above is not vacuous
        assert (layer.soft_forward(x, temperature=10.0) - hard).abs().max() > 1e-2


def test_leaf_probs_are_a_distribution_and_agree_with_route():
    layer = random_layer(16, 6, 1)
    x = torch.randn(300, 16)
    with torch.no_grad():
        w, _ = layer.leaf_probs(x, 1e-4)
        torch.testing.assert_close(w.sum(1), torch.ones(300))
        assert w.shape == (300, 64)
        assert layer.agreement(x, 1e-4) > 0.95


def test_hardening_loss_bounds():
    layer = random_layer(16, 4, 1)
    x = torch.randn(64, 16)
    with torch.no_grad():
        assert layer.hardening_loss(x, temperature=1e-6) < 1e-3  # decisive: ~0
        layer.node_weight.zero_()
        layer.node_bias.zero_()
        assert layer.hardening_loss(x) == pytest.approx(math.log(2), rel=1e-4)  # coin flips


def test_hardening_loss_has_gradient_toward_decisive_routing():
    layer = random_layer(16, 3, 1)
    x = torch.randn(64, 16)
    layer.hardening_loss(x, temperature=5.0).backward()
    assert layer.node_weight.grad.abs().sum() > 0


def test_parameter_layout():
    layer = FFF(24, 5, 3)
    shapes = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    assert shapes == {"node_weight": (31, 24), "node_bias": (31,), "weight": (32, 3, 24), "bias": (32, 3),
                      "w2": (32, 3, 24), "leaf_bias": (32, 24), "out_bias": (24,)}
    assert all(p.is_contiguous() for p in layer.parameters())


def test_default_leaf_width_covers_dense_width():
    assert default_leaf_width(3072, 11) == 2
    assert default_leaf_width(1536, 10) == 2
    assert default_leaf_width(1536, 12) == 1
    assert default_leaf_width(3072, 8) == 12


@pytest.mark.parametrize("bad", [dict(depth=0), dict(leaf_width=0), dict(activation="tanh")])
def test_bad_shapes_are_refused(bad):
    args = dict(hidden_size=8, depth=2, leaf_width=1, activation="gelu") | bad
    with pytest.raises(ValueError):
        FFF(**args)
