"""The real all-MiniLM-L6-v2 (6 layers, H=384, F=1536), converted with a small budget."""
import pytest
import torch
import transformers

import fffconvert
from fffconvert.convert import FFFConfig
from fffconvert.distill import DistillConfig
from fffconvert.e2e import E2EConfig


@pytest.fixture(scope="module")
def converted(minilm_path, tokenizer, texts):
    model = transformers.AutoModel.from_pretrained(minilm_path).eval()
    config = FFFConfig(depth=6, calib_tokens=12000, distill=DistillConfig(steps=30, batch_tokens=1024), e2e=E2EConfig(steps=0),
                       baselines=True)
    return fffconvert.convert(model, config, texts, tokenizer, progress=False)


def test_clustering_init_beats_random_init_on_every_layer(converted):
    layers = converted.config.fff["layers"]
    assert len(layers) == 6
    for row in layers:
        assert row["fvu_init"] < row["fvu_random"], row


def test_distilled_layers_are_hard_and_close_to_dense(converted):
    for row in converted.config.fff["layers"]:
        assert row["agreement"] > 0.9, row
        assert row["fvu_hard"] < 0.5, row


def test_round_trip_and_kernel_give_the_same_embeddings(converted, tokenizer, tmp_path):
    fffconvert.save_pretrained(converted, tmp_path / "m", tokenizer)
    loaded = fffconvert.from_pretrained(tmp_path / "m")
    assert isinstance(loaded, transformers.BertModel)
    batch = tokenizer(["A short one.", "A somewhat longer sentence, with a clause or two in it."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        a = converted(**batch).last_hidden_state
        b = loaded(**batch).last_hidden_state
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_fff_model_stays_close_to_the_dense_model(converted, minilm_path, tokenizer):
    dense = transformers.AutoModel.from_pretrained(minilm_path).eval()
    batch = tokenizer(["The film was a quiet delight.", "Prices in the market fell sharply on Monday."],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        a = dense(**batch).last_hidden_state[:, 0]
        b = converted(**batch).last_hidden_state[:, 0]
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert (cos > 0.8).all(), cos
