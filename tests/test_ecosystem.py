"""A converted folder works through the standard entry points (the README's table, one test per
row), and no loader gets random FFNs from it without an error."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from click.testing import CliRunner

import fffconvert
from fffconvert.cli import main
from fffconvert.measures import Pooling
from fffconvert.sources import embedded_model_path
from conftest import tiny_model

SENTENCES = ["A short sentence.", "Another one, a little longer than the first.", "Third."]
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "1_Pooling/config.json",
            "README.md")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tokenizer):
    """A tiny sentence-transformers BERT (the embedded MiniLM's modules, a tiny random body),
    converted by the CLI: (output folder, source folder)."""
    src = tmp_path_factory.mktemp("st") / "src"
    tiny_model("bert", "Model").save_pretrained(src)
    tokenizer.save_pretrained(src)
    for f in ST_FILES:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(embedded_model_path() / f, src / f)
    pooling = json.loads((src / "1_Pooling/config.json").read_text())
    (src / "1_Pooling/config.json").write_text(json.dumps({**pooling, "word_embedding_dimension": 32}))
    out = src.parent / "out"
    r = CliRunner().invoke(main, [str(src), "--depth", "2", "--steps", "2", "--e2e-steps", "2", "--e2e-batch-size", "8",
                                  "--calib-tokens", "2000", "--output", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return out, src


def batch(tokenizer):
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


def reference(out, tokenizer):
    model = fffconvert.from_pretrained(out)
    with torch.no_grad():
        return model(**batch(tokenizer)).last_hidden_state


def test_automodel(converted, tokenizer):
    model = transformers.AutoModel.from_pretrained(converted[0])
    assert type(model).__name__ == "FFFBertModel" and isinstance(model, transformers.BertModel)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch(tokenizer)).last_hidden_state, reference(converted[0], tokenizer))
    assert type(transformers.AutoConfig.from_pretrained(converted[0])).__name__ == "FFFBertConfig"


def test_automodel_for_sequence_classification_and_masked_lm(converted):
    clf = transformers.AutoModelForSequenceClassification.from_pretrained(converted[0], num_labels=3)
    assert type(clf).__name__ == "FFFBertForSequenceClassification" and clf.config.num_labels == 3
    mlm = transformers.AutoModelForMaskedLM.from_pretrained(converted[0])
    assert type(mlm).__name__ == "FFFBertForMaskedLM"
    base = fffconvert.from_pretrained(converted[0]).state_dict()
    for model in (clf, mlm):  # the body, FFF layers included, is the converted one
        body = {k.split("bert.", 1)[1]: v for k, v in model.state_dict().items() if k.startswith("bert.")}
        assert all(torch.equal(body[k], base[k]) for k in base if k in body) and any("node_weight" in k for k in body)


def test_pipeline_by_path(converted, tokenizer):
    pipe = transformers.pipeline("feature-extraction", model=str(converted[0]), device="cpu")
    out = torch.tensor(pipe(SENTENCES[1]))
    with torch.no_grad():
        expected = fffconvert.from_pretrained(converted[0])(**tokenizer(SENTENCES[1], return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_sentence_transformer_by_path(converted, tokenizer, tmp_path):
    st_mod = pytest.importorskip("sentence_transformers")
    st = st_mod.SentenceTransformer(str(converted[0]), device="cpu")
    emb = st.encode(SENTENCES, convert_to_tensor=True)
    b = batch(tokenizer)
    with torch.no_grad():
        expected = Pooling("mean", True)(fffconvert.from_pretrained(converted[0])(**b).last_hidden_state, b["attention_mask"])
    assert (emb - expected).abs().max() < 1e-5
    assert type(st[0].auto_model).__name__ == "FFFBertModel"
    st.save(str(tmp_path / "again"))
    again = st_mod.SentenceTransformer(str(tmp_path / "again"), device="cpu")
    assert (again.encode(SENTENCES, convert_to_tensor=True) - emb).abs().max() < 1e-6
    assert st.similarity(emb, emb).shape == (3, 3)


def test_trainer_finetune_save_and_reload(converted, tokenizer, tmp_path):
    pytest.importorskip("accelerate")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(converted[0], num_labels=2)
    nodes = [layer.node_weight.detach().clone() for layer in fffconvert.surgery.fff_layers(model)]
    leaves = [layer.w2.detach().clone() for layer in fffconvert.surgery.fff_layers(model)]
    data = [{**{k: v[0] for k, v in tokenizer(s, return_tensors="pt").items()}, "labels": torch.tensor(i % 2)}
            for i, s in enumerate(SENTENCES * 4)]
    args = transformers.TrainingArguments(str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                   data_collator=transformers.DataCollatorWithPadding(tokenizer))
    trainer.train()
    layers = fffconvert.surgery.fff_layers(model)
    assert all(torch.equal(n, layer.node_weight) for n, layer in zip(nodes, layers))  # routing as converted
    assert any(not torch.equal(w, layer.w2) for w, layer in zip(leaves, layers))  # leaves learned
    trainer.save_model(str(tmp_path / "task"))
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "task")
    assert type(reloaded).__name__ == "FFFBertForSequenceClassification"
    assert (tmp_path / "task" / "tokenizer.json").exists()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch(tokenizer)).logits, model(**batch(tokenizer)).logits)


def test_routing_trainer_trains_routing_and_ends_hard(converted, tokenizer, tmp_path):
    pytest.importorskip("accelerate")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(converted[0], num_labels=2)
    nodes = [layer.node_weight.detach().clone() for layer in fffconvert.surgery.fff_layers(model)]
    data = [{**{k: v[0] for k, v in tokenizer(s, return_tensors="pt").items()}, "labels": torch.tensor(i % 2)}
            for i, s in enumerate(SENTENCES * 4)]
    args = transformers.TrainingArguments(str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True)
    fffconvert.RoutingTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                              data_collator=transformers.DataCollatorWithPadding(tokenizer)).train()
    layers = fffconvert.surgery.fff_layers(model)
    assert any(not torch.equal(n, layer.node_weight) for n, layer in zip(nodes, layers))  # routing learned
    assert all(not layer.soft for layer in layers)


def test_hub_id_in_from_pretrained(converted, monkeypatch, tokenizer):
    import huggingface_hub

    asked = {}

    def fake_download(repo_id, **kw):
        asked["repo"] = repo_id
        return str(converted[0])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.setattr(fffconvert.folders, "hub_reachable", lambda timeout=3.0: True)
    model = fffconvert.from_pretrained("someone/minilm-fff")
    assert asked["repo"] == "someone/minilm-fff" and type(model).__name__ == "FFFBertModel"


def test_push_to_hub_uploads_the_folder(converted, monkeypatch):
    import huggingface_hub

    calls = {}
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, repo_id, folder_path, **kw: calls.setdefault("files", sorted(p.name for p in Path(folder_path).iterdir())))
    fffconvert.push_to_hub(converted[0], "someone/minilm-fff")
    assert calls["repo"] == "someone/minilm-fff" and {"model.safetensors", "config.json", "README.md", "modules.json"} <= set(calls["files"])
    calls.clear()
    fffconvert.push_to_hub(fffconvert.from_pretrained(converted[0]), "someone/other")
    assert {"model.safetensors", "config.json", "README.md"} <= set(calls["files"])


def test_model_card_has_hub_metadata(converted):
    from huggingface_hub import ModelCard

    data = ModelCard.load(converted[0] / "README.md").data
    assert {"fffconvert", "fast-feedforward"} <= set(data.tags) and data.library_name == "sentence-transformers"
    assert data.license == "apache-2.0" and data.base_model


def test_onnx_export_in_inference_mode(converted, tokenizer, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = fffconvert.from_pretrained(converted[0])

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    b = batch(tokenizer)
    with torch.no_grad():
        torch.onnx.export(Encoder(model).eval(), (b["input_ids"], b["attention_mask"]), str(tmp_path / "m.onnx"),
                          dynamo=True, dynamic_shapes={"input_ids": {0: "batch", 1: "seq"},
                                                       "attention_mask": {0: "batch", 1: "seq"}})
        other = tokenizer(["Other text, of another length than any before it.", "x"], padding=True, return_tensors="pt")
        expected = Encoder(model)(other["input_ids"], other["attention_mask"]).numpy()
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {k: other[k].numpy() for k in ("input_ids", "attention_mask")})[0]
    assert abs(got - expected).max() < 1e-4


LOADERS_WITHOUT_FFFCONVERT = """
import sys, transformers
path = sys.argv[1]
for load in (lambda: transformers.AutoModel.from_pretrained(path),
             lambda: transformers.BertModel.from_pretrained(path),
             lambda: transformers.AutoModelForSequenceClassification.from_pretrained(path),
             lambda: transformers.pipeline("feature-extraction", model=path)):
    try:
        load()
        print("LOADED")
    except Exception as e:
        print("REFUSED", type(e).__name__, str(e).splitlines()[0][:200])
assert "fffconvert" not in sys.modules
"""


def test_loading_without_fffconvert_raises(converted):
    r = subprocess.run([sys.executable, "-c", LOADERS_WITHOUT_FFFCONVERT, str(converted[0])], capture_output=True, text=True,
                       env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("LOADED", "REFUSED"))]
    assert len(lines) == 4 and all(ln.startswith("REFUSED") for ln in lines), r.stdout + r.stderr
    assert "fffconvert-bert" in lines[0]  # the Auto classes name the model type
