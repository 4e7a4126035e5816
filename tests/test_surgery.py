"""Model surgery on tiny random models of each supported architecture, plain and with task heads."""
import pytest
import torch
import transformers

from fffconvert.layer import FFF
from fffconvert.errors import UserError
from fffconvert.surgery import ARCHITECTURES, empty_fff_model, fff_layers, find_ffns
from conftest import TINY_CONFIGS, tiny_model

CASES = [(t, head) for t in ARCHITECTURES for head in ("Model", "ForSequenceClassification", "ForMaskedLM")]


@pytest.mark.parametrize("model_type,head", CASES)
def test_every_ffn_is_swapped_and_nothing_else_changes(model_type, head):
    model = tiny_model(model_type, head)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_layers = len(find_ffns(model))
    ffn_names = {f"{b.name}.{p}" for b in find_ffns(model) for p in (ARCHITECTURES[model_type].fc1, ARCHITECTURES[model_type].fc2)}
    empty_fff_model(model, depth=3, leaf_width=2)
    layers = fff_layers(model)
    assert len(layers) == n_layers == TINY_CONFIGS[model_type].num_hidden_layers
    after = model.state_dict()
    kept = {k for k in before if not any(k.startswith(n + ".") for n in ffn_names)}
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)  # bit-identical
    # the dense FFN weights are gone; the leaves' input weights take fc1's names with other shapes
    assert all(k not in after or after[k].shape != before[k].shape for k in before.keys() - kept)
    ids = torch.randint(1000, 2000, (2, 7))
    with torch.no_grad():
        out = model(input_ids=ids)
    assert torch.isfinite(out[0]).all()


def test_activation_follows_the_source_model():
    model = tiny_model("electra")
    empty_fff_model(model, 2, 1)
    assert {layer.activation for layer in fff_layers(model)} == {"gelu_tanh"}
    model = tiny_model("distilbert")
    empty_fff_model(model, 2, 1)
    assert {layer.activation for layer in fff_layers(model)} == {"relu"}


def test_unsupported_architecture_names_the_supported_ones():
    model = transformers.GPT2Model(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(UserError, match="supported: bert, distilbert, electra, roberta"):
        empty_fff_model(model, 2, 1)


def test_unsupported_activation_is_refused():
    config = transformers.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, hidden_act="mish")
    with pytest.raises(UserError, match="activation 'mish'"):
        empty_fff_model(transformers.BertModel(config), 2, 1)


def test_fff_layer_in_place_of_the_input_projection():
    model = tiny_model("bert")
    empty_fff_model(model, 2, 1)
    block = model.encoder.layer[0]
    assert isinstance(block.intermediate.dense, FFF)
    assert isinstance(block.intermediate.intermediate_act_fn, torch.nn.Identity)
    assert isinstance(block.output.dense, torch.nn.Identity)
