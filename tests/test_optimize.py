"""fffconvert.optimize: graphs per input shape give the model's own outputs (CUDA parts run on the GPU machine)."""
import warnings

import pytest
import torch

import fffconvert
from conftest import tiny_fff_model, tiny_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (runs on the GPU machine)")


def test_a_cpu_model_is_returned_as_it_is():
    model = tiny_fff_model("bert")
    assert fffconvert.optimize(model) is model


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_the_graphs_4d_mask_means_what_the_2d_mask_means(model_type, impl):
    from fffconvert.optimize import _mask_4d

    model = tiny_fff_model(model_type)
    model.config._attn_implementation = impl
    ids = torch.randint(1000, 30000, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=_mask_4d(mask, model)).logits,
                                   model(input_ids=ids, attention_mask=mask).logits)


@cuda
@pytest.mark.parametrize("model_type,impl", [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa"),
                                             ("distilbert", "sdpa")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphs_give_the_models_outputs(model_type, impl, dtype):
    model = tiny_fff_model(model_type)
    model.config._attn_implementation = impl
    model = model.cuda().to(dtype).eval()
    fast = fffconvert.optimize(model, max_graphs=2)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    g = torch.Generator().manual_seed(0)
    held = []
    for batch, tokens in [(3, 7), (3, 7), (5, 11), (2, 4), (3, 7)]:  # repeats, a new shape, an eviction
        ids = torch.randint(1000, 30000, (batch, tokens), generator=g).cuda()
        mask = torch.ones_like(ids)
        mask[0, tokens // 2:] = 0  # padding is data: the same graph serves any mask
        with torch.no_grad():
            want = model(input_ids=ids, attention_mask=mask).logits
            got = fast(input_ids=ids, attention_mask=mask).logits
            unmasked = fast(input_ids=ids).logits
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
        torch.testing.assert_close(unmasked, model(input_ids=ids).logits.detach(), atol=tol, rtol=tol)
        held.append((got, want))
    assert len(fast._graphs) == 2
    for got, want in held:  # later replays did not overwrite what earlier calls returned
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@cuda
def test_training_and_gradients_run_eagerly():
    model = tiny_model("bert", "ForSequenceClassification").cuda()
    fast = fffconvert.optimize(model)
    ids = torch.randint(1000, 30000, (2, 5)).cuda()
    model.train()
    fast(input_ids=ids).logits.sum().backward()
    assert model.classifier.weight.grad is not None and not fast._graphs


def test_a_torchao_int8_model_on_the_cpu_is_compiled_and_gives_its_outputs():
    pytest.importorskip("torchao", reason="torchao (pip install fffconvert[quant])")
    from fffconvert.optimize import CompiledModel
    from fffconvert.quantize import quantize
    from fffconvert.surgery import fff_layers

    model = quantize(tiny_fff_model("bert"), "int8", backend="torchao")
    assert all(type(p).__module__.startswith("torch.") for layer in fff_layers(model) for p in layer.parameters())
    fast = fffconvert.optimize(model)
    assert isinstance(fast, CompiledModel) and len(list(fast.parameters())) == len(list(model.parameters()))
    assert fast.config is model.config and fast.get_input_embeddings() is model.get_input_embeddings()
    g = torch.Generator().manual_seed(0)
    for batch, tokens in [(3, 7), (3, 9), (1, 5)]:  # a shape, a new length (dynamic), batch 1
        ids = torch.randint(1000, 30000, (batch, tokens), generator=g)
        mask = torch.ones_like(ids)
        mask[0, tokens // 2:] = 0
        with torch.inference_mode():
            torch.testing.assert_close(fast(input_ids=ids, attention_mask=mask).logits,
                                       model(input_ids=ids, attention_mask=mask).logits, atol=1e-4, rtol=1e-4)
    model.train()
    fast(input_ids=ids).logits.sum().backward()  # training runs the model itself
    assert model.classifier.bias.grad is not None


def test_compiled_models_never_share_weights():
    # the compiled graphs hold the weights as constants: two models of one class, or one model optimized
    # again after a change, must each run their own
    pytest.importorskip("torchao", reason="torchao (pip install fffconvert[quant])")
    from fffconvert.quantize import quantize

    models = [tiny_fff_model("bert") for _ in range(2)]
    with torch.no_grad():
        for p in models[1].parameters():  # two models of one class and shape, not of the same weights
            p.mul_(0.7)
    models = [quantize(m, "int8", backend="torchao") for m in models]
    ids = torch.randint(1000, 30000, (2, 6))
    with torch.inference_mode():
        own = [m(input_ids=ids).logits for m in models]
        apart = (own[0] - own[1]).abs().max()
        for model, logits in zip(models, own):
            assert (fffconvert.optimize(model)(input_ids=ids).logits - logits).abs().max() < apart / 10
        with torch.no_grad():
            for p in models[0].bert.embeddings.parameters():
                p.mul_(0.7)
        changed = models[0](input_ids=ids).logits
        assert (fffconvert.optimize(models[0])(input_ids=ids).logits - changed).abs().max() < (changed - own[0]).abs().max() / 10


def test_a_model_that_cannot_be_compiled_runs_eagerly_after_one_warning(monkeypatch):
    pytest.importorskip("torchao", reason="torchao (pip install fffconvert[quant])")
    import torch._inductor.config as inductor

    from fffconvert.quantize import quantize

    monkeypatch.setattr(inductor.cpp, "cxx", ("no-such-compiler",))
    torch._dynamo.reset()
    model = quantize(tiny_fff_model("bert"), "int8", backend="torchao")
    fast = fffconvert.optimize(model)
    ids = torch.randint(1000, 30000, (2, 5))
    with torch.inference_mode():
        with pytest.warns(UserWarning, match="could not compile the model .*C\\+\\+ compiler.*runs eagerly"):
            got = fast(input_ids=ids).logits
        torch.testing.assert_close(got, model(input_ids=ids).logits)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no second try, no second warning
            torch.testing.assert_close(fast(input_ids=ids).logits, got)
    torch._dynamo.reset()
