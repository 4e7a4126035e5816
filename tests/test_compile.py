"""torch.compile of converted models: the kernel enters the graph as `torch.ops.fffconvert.fff_forward`."""
import pytest
import torch

from fffconvert import kernels
from conftest import tiny_fff_model
from test_layer import random_layer


def _devices():
    devices = [pytest.param("cpu", marks=pytest.mark.skipif(isinstance(kernels._cpu, ImportError), reason="CPU kernel not built"))]
    cuda_ok = torch.cuda.is_available() and not isinstance(kernels._cuda_ext(), ImportError)
    devices.append(pytest.param("cuda", marks=pytest.mark.skipif(not cuda_ok, reason="no CUDA GPU with the built CUDA kernel")))
    return devices


@pytest.mark.parametrize("device", _devices())
def test_operator_passes_opcheck(device):
    """Schema, fake-tensor (shape) implementation and dispatch are consistent, as torch.library checks them."""
    layer = random_layer(40, 4, 3).to(device)
    p = [t.detach() for t in layer.parameters()]
    for shape in ((0, 40), (1, 40), (9, 40), (3, 5, 40)):  # the kernels take [..., H]
        torch.library.opcheck(torch.ops.fffconvert.fff_forward.default, (torch.randn(*shape, device=device), *p, "gelu"))


@pytest.mark.parametrize("device", _devices())
def test_compiled_model_is_one_graph_with_the_same_logits(device, monkeypatch):
    model = tiny_fff_model("bert").to(device)
    ids = torch.randint(1000, 2000, (3, 9), device=device)
    ran = []  # token counts a compiled kernel was picked for
    kernel_for = kernels.kernel_for

    def counting_kernel_for(x):
        ext = kernel_for(x)
        if ext is not None:
            ran.append(x.shape[:-1].numel())
        return ext

    monkeypatch.setattr(kernels, "kernel_for", counting_kernel_for)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break would raise
    with torch.no_grad():
        fast = compiled(input_ids=ids).logits
        monkeypatch.setenv("FFFCONVERT_KERNELS", "torch")
        ref = model(input_ids=ids).logits
    assert ran.count(27) == model.config.num_hidden_layers  # each layer's 3 x 9 tokens, through the kernel
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
