"""The Cython CPU kernel against the PyTorch reference forward."""
import warnings

import pytest
import torch

from fffconvert import kernels
from fffconvert.layer import ACTIVATIONS, FFF
from conftest import tiny_fff_model
from test_layer import random_layer

pytestmark = pytest.mark.skipif(isinstance(kernels._cpu, ImportError), reason="CPU kernel not built (pip install -e .)")


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("H,D,L", [(768, 11, 2), (384, 10, 2), (96, 3, 5), (37, 4, 1), (8, 1, 3), (130, 7, 12)])
@pytest.mark.parametrize("n", [0, 1, 7, 129])
def test_kernel_matches_reference(act, H, D, L, n):
    layer = random_layer(H, D, L, act, seed=H + D + n).eval()
    x = torch.randn(n, H)
    with torch.no_grad():
        assert kernels.kernel_for(x) is kernels._cpu
        torch.testing.assert_close(layer(x), layer.hard_forward(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("H,D,L", [(768, 11, 2), (96, 3, 5), (37, 4, 1), (130, 7, 12), (20, 10, 1), (16, 8, 3)])
@pytest.mark.parametrize("n", [0, 1, 3, 5, 258, 1031])
@pytest.mark.parametrize("group", [False, True])
def test_both_schedules_match_reference(H, D, L, n, group):
    """Per token and grouped by subtree, whatever the batch size picks (subtrees of 1 to 5 levels
    here; n not a multiple of 4: both schedules work four tokens at a time and pad the last group)."""
    layer = random_layer(H, D, L, "gelu", seed=n + D).eval()
    x = torch.randn(n, H)
    p = [t.detach() for t in (layer.node_weight, layer.node_bias, layer.weight, layer.bias, layer.w2, layer.leaf_bias, layer.out_bias)]
    with torch.no_grad():
        y = kernels._cpu.fff_forward(x, *p, "gelu", group=group)
        torch.testing.assert_close(y, layer.hard_forward(x), rtol=1e-5, atol=1e-4)


def test_kernel_takes_3d_and_non_contiguous_inputs():
    layer = random_layer(64, 6, 2).eval()
    x = torch.randn(3, 11, 128)[..., ::2]  # strided last dim
    assert not x.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.hard_forward(x), rtol=1e-5, atol=1e-4)
        xt = torch.randn(11, 3, 64).transpose(0, 1)
        torch.testing.assert_close(layer(xt), layer.hard_forward(xt), rtol=1e-5, atol=1e-4)


def test_many_threads_and_many_tokens_agree(monkeypatch):
    layer = random_layer(48, 8, 2).eval()
    x = torch.randn(5003, 48)
    with torch.no_grad():
        ref = layer.hard_forward(x)
        for threads in (1, 2, 3):
            monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
            torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert"])
def test_whole_models_give_the_same_logits(model_type, monkeypatch):
    model = tiny_fff_model(model_type)
    ids = torch.randint(1000, 2000, (3, 9))
    with torch.no_grad():
        fast = model(input_ids=ids).logits
        monkeypatch.setenv("FFFCONVERT_KERNELS", "torch")
        ref = model(input_ids=ids).logits
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_training_and_gradients_stay_in_pytorch():
    layer = random_layer(32, 3, 2)
    x = torch.randn(5, 32, requires_grad=True)
    layer.eval()
    layer(x).sum().backward()  # an input that needs gradients takes the reference
    assert x.grad is not None and layer.weight.grad is not None
    layer.train()
    layer(torch.randn(5, 32)).sum().backward()
    assert layer.w2.grad.abs().sum() > 0


def test_other_dtypes_use_the_reference():
    layer = random_layer(32, 3, 2).double().eval()
    x = torch.randn(4, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.hard_forward(x))


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(kernels, "_cpu", ImportError("not built"))
    monkeypatch.setattr(kernels, "_warned", set())
    layer = random_layer(16, 3, 2).eval()
    x = torch.randn(4, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            y1, y2 = layer(x), layer(x)
    assert len([w for w in caught if "CPU kernel not built" in str(w.message)]) == 1
    torch.testing.assert_close(y1, layer.hard_forward(x))
    torch.testing.assert_close(y2, y1)


def test_output_memory_is_reused_only_once_free(monkeypatch):
    """A layer reuses its previous output's memory (kernels._output_for), but never while that
    output, or a view of it, is still held: then it would overwrite a result the caller still has."""
    monkeypatch.setattr(kernels, "REUSE_BYTES", 0)  # every output counts as large enough to reuse
    layer = random_layer(32, 4, 2).eval()
    xa, xb = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        ya = layer(xa)
        yb = layer(xb)  # ya is still held
        assert ya.data_ptr() != yb.data_ptr()
        torch.testing.assert_close(ya, layer.hard_forward(xa), rtol=1e-5, atol=1e-4)
        view = yb[0]
        del yb
        freed = layer(xa * 2).data_ptr()  # a view of yb is still alive: new memory, released at once
        torch.testing.assert_close(view, layer.hard_forward(xb)[0], rtol=1e-5, atol=1e-4)  # yb untouched
        del view
        yc = layer(xb)
        assert yc.data_ptr() == freed  # released outputs are reused
        torch.testing.assert_close(yc, layer.hard_forward(xb), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(ya, layer.hard_forward(xa), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_layers_run_the_float32_kernel(dtype, recwarn):
    from fffconvert import kernels

    torch.manual_seed(0)
    layer = FFF(48, 5, 3).to(dtype).eval()
    x = torch.randn(37, 48).to(dtype)
    kernels._warned.discard("half-cpu")
    with torch.no_grad():
        y = layer(x)
        ref = FFF(48, 5, 3).eval()
        ref.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
        expected = ref.hard_forward(x.float())
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
    assert sum("float32" in str(w.message) for w in recwarn) == 1
    with torch.no_grad():
        layer(x)  # warned once only
    assert sum("float32" in str(w.message) for w in recwarn) == 1
