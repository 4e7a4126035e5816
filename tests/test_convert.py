"""Conversion of tiny random models end to end: determinism, checks, the safetensors round trip."""
import json

import pytest
import torch

import fffconvert
from fffconvert.convert import FFFConfig, check_calibration
from fffconvert.distill import DistillConfig
from fffconvert.e2e import E2EConfig
from fffconvert.errors import UserError
from fffconvert.surgery import ARCHITECTURES, fff_layers
from conftest import tiny_model

SMALL = dict(depth=2, calib_tokens=600, distill=DistillConfig(steps=3, batch_tokens=64), e2e=E2EConfig(steps=3, batch_size=8))


def convert_tiny(model_type, head, tokenizer, texts, seed=0):
    model = tiny_model(model_type, head)
    return fffconvert.convert(model, FFFConfig(seed=seed, **SMALL), texts[:60], tokenizer, progress=False)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_round_trip_gives_the_same_outputs(model_type, tokenizer, texts, tmp_path):
    for head in ("ForSequenceClassification", "ForMaskedLM"):
        model = convert_tiny(model_type, head, tokenizer, texts).eval()
        fffconvert.save_pretrained(model, tmp_path / head, tokenizer)
        loaded = fffconvert.from_pretrained(tmp_path / head)
        assert type(loaded) is type(model) and not loaded.training
        batch = tokenizer(texts[100:105], padding=True, return_tensors="pt")
        with torch.no_grad():
            torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-5)
        files = {p.name for p in (tmp_path / head).iterdir()}
        assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= files
        assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_converted_model_returns_hidden_states_before_and_after_saving(model_type, tokenizer, texts, tmp_path):
    # the model convert() returns has its class changed in place; transformers must still return
    # what it is asked for (it once gave None for hidden states until the model was saved and loaded)
    model = convert_tiny(model_type, "Model", tokenizer, texts).eval()  # a head's inner model keeps its class
    batch = tokenizer(texts[100:103], padding=True, return_tensors="pt")
    with torch.no_grad():  # before any model of the class is loaded (loading one hid the fault)
        ours = model(**batch, output_hidden_states=True).hidden_states
        fffconvert.save_pretrained(model, tmp_path / "m", tokenizer)
        theirs = fffconvert.from_pretrained(tmp_path / "m")(**batch, output_hidden_states=True).hidden_states
    assert ours is not None and len(ours) == model.config.num_hidden_layers + 1
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_config_records_the_conversion(tokenizer, texts, tmp_path):
    model = convert_tiny("bert", "Model", tokenizer, texts)
    fffconvert.save_pretrained(model, tmp_path / "m", tokenizer, command="fffconvert x --depth 2")
    fff = json.loads((tmp_path / "m" / "config.json").read_text())["fff"]
    assert fff["version"] == fffconvert.__version__ and fff["rows_per_token"] == 18
    assert [(r["depth"], r["leaf_width"]) for r in fff["layers"]] == [(2, 16), (2, 16)]
    assert {"fvu_init", "fvu_hard", "agreement"} <= fff["layers"][0].keys()
    assert {"layerwise_only", "after", "steps"} <= fff["end_to_end"].keys()
    card = (tmp_path / "m" / "README.md").read_text()
    assert "18.0 of the dense FFN's 64 neurons" in card and "fffconvert x --depth 2" in card
    assert card.startswith("---\n") and "fffconvert" in card.split("---")[1]


def test_conversion_is_deterministic_under_seed(tokenizer, texts):
    a = convert_tiny("distilbert", "Model", tokenizer, texts, seed=3).state_dict()
    b = convert_tiny("distilbert", "Model", tokenizer, texts, seed=3).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_converted_layers_are_eval_and_hard(tokenizer, texts):
    model = convert_tiny("roberta", "Model", tokenizer, texts)
    assert all(not layer.soft and not layer.training for layer in fff_layers(model))


def test_too_deep_for_the_calibration_tokens(tokenizer, texts):
    ids = tokenizer(texts[:10])["input_ids"]
    with pytest.raises(UserError, match="depth 12 needs at least"):
        check_calibration(FFFConfig(depth=12), ids)


def test_failed_save_leaves_nothing(tmp_path, tokenizer, texts):
    model = convert_tiny("bert", "Model", tokenizer, texts)

    class Broken:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        fffconvert.save_pretrained(model, tmp_path / "out", Broken())
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_existing_folder_without_overwrite(tmp_path, tokenizer, texts):
    model = convert_tiny("bert", "Model", tokenizer, texts)
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="exists"):
        fffconvert.save_pretrained(model, tmp_path / "out")
    fffconvert.save_pretrained(model, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_repeated_tokens_give_finite_trees():
    """Repeated text puts identical tokens in a node; their split must not divide by zero (it did:
    NaN weights on a GLUE run whose calibration text repeats sentences)."""
    from fffconvert.layer import FFF
    from fffconvert.tree_init import DenseFFN, init_from_dense

    torch.manual_seed(0)
    fc1, fc2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)
    X = torch.cat([torch.randn(200, 16), torch.randn(1, 16).expand(120, 16)])  # 120 copies of one token
    layer = init_from_dense(FFF(16, 6, 2), X, DenseFFN(fc1, fc2, "gelu"), seed=0)
    assert all(p.isfinite().all() for p in layer.parameters())
    assert layer.hard_forward(X).isfinite().all()


def test_texts_are_cut_to_the_positions_a_model_has(tokenizer, texts, tmp_path):
    import transformers

    from fffconvert.evaluate import evaluate
    from fffconvert.sources import load_dense

    model = tiny_model("bert")
    model.config.max_position_embeddings = 20
    transformers.BertModel(model.config).save_pretrained(tmp_path / "short")
    tokenizer.save_pretrained(tmp_path / "short")
    src = load_dense(str(tmp_path / "short"))
    assert src.tokenizer.model_max_length == 20
    fff = fffconvert.convert(src.model, FFFConfig(depth=2, calib_tokens=1500, e2e=E2EConfig(steps=2, batch_size=4)),
                             texts[:300], src.tokenizer, progress=False)
    result = evaluate(fff, load_dense(str(tmp_path / "short")).model, src.tokenizer, texts[:20])
    assert result["tokens"] > 0 and 0 < result["token_cosine"] <= 1
