"""The CUDA kernel against a float64 reference (runs on a GPU machine; skips elsewhere)."""
import pytest
import torch

from fffconvert import kernels
from fffconvert.layer import ACTIVATIONS
from conftest import tiny_fff_model
from test_layer import random_layer

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU (CUDA kernel tests run on the GPU machine)", allow_module_level=True)
if kernels._cuda_ext() is None or isinstance(kernels._cuda_ext(), ImportError):
    pytest.skip("CUDA kernel not built (pip install --no-build-isolation -e . with nvcc)", allow_module_level=True)

DTYPES = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def check(layer, x, tol):
    """Kernel output vs the float64 reference of the same (rounded) weights, on tokens whose
    routing is not on a knife edge (rounding may flip a decision with |w.x + c| ~ 0)."""
    ref_layer = layer.double()
    with torch.no_grad():
        ref = ref_layer.hard_forward(x.double())
        flat = x.double().reshape(-1, layer.hidden_size)
        z = flat @ ref_layer.node_weight.t() + ref_layer.node_bias
        clear = (z.abs() > 0.05 * z.abs().mean()).all(1) if flat.shape[0] else torch.ones(0, dtype=torch.bool, device=x.device)
    layer.to(x.dtype)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == x.dtype and y.shape == x.shape and torch.isfinite(y).all()
    y, ref = y.double().reshape(-1, layer.hidden_size)[clear], ref.reshape(-1, layer.hidden_size)[clear]
    if len(ref):
        assert ((y - ref).norm() / ref.norm()).item() < tol


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("H,D,L", [(768, 11, 2), (384, 10, 2), (96, 3, 5), (36, 4, 1), (130, 7, 12), (8, 1, 3)])
@pytest.mark.parametrize("n", [0, 1, 31, 513, 4097])
def test_cuda_kernel_matches_reference(dtype, act, H, D, L, n):
    layer = random_layer(H, D, L, act, seed=H + D + n).cuda().eval()
    with torch.no_grad():
        layer.weight.mul_(H ** -0.5)
        layer.node_weight.mul_(H ** -0.5)
    x = torch.randn(n, H, device="cuda", dtype=dtype)
    assert kernels.kernel_for(x) is not None
    check(layer, x, DTYPES[dtype])


def test_cuda_kernel_3d_non_contiguous_and_offset_inputs():
    layer = random_layer(64, 6, 2).cuda().eval()
    check(layer, torch.randn(3, 11, 128, device="cuda")[..., ::2], 1e-5)
    check(layer, torch.randn(11, 3, 64, device="cuda").transpose(0, 1), 1e-5)
    check(layer, torch.randn(5 * 64 + 3, device="cuda")[3:].view(5, 64), 1e-5)  # 12-byte offset: scalar path


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_cuda_whole_model_same_logits(model_type, monkeypatch):
    model = tiny_fff_model(model_type).cuda()
    ids = torch.randint(1000, 2000, (3, 9), device="cuda")
    with torch.no_grad():
        fast = model(input_ids=ids).logits
        monkeypatch.setenv("FFFCONVERT_KERNELS", "torch")
        ref = model(input_ids=ids).logits
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
