"""End-to-end distillation inside `convert`, resuming a killed conversion, per-layer shapes and
budgets, and `fffconvert eval` (tiny models on the CPU)."""
import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

import fffconvert
from fffconvert.cli import main
from fffconvert.convert import FFFConfig
from fffconvert.distill import DistillConfig
from fffconvert.e2e import E2EConfig
from fffconvert.errors import UserError
from fffconvert.measures import Pooling
from conftest import tiny_model


def hard_tiny_bert(seed=0):
    """A tiny BERT whose FFNs matter (larger weights): a small tree cannot copy them layer by layer."""
    model = tiny_model("bert", "Model", seed=seed)
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.intermediate.dense.weight.normal_(0, 0.2)
            layer.output.dense.weight.normal_(0, 0.2)
    return model


def config(steps=40, **kw):
    return FFFConfig(depth=2, leaf_width=1, calib_tokens=3000, distill=DistillConfig(steps=20, batch_tokens=256),
                     e2e=E2EConfig(steps=steps, batch_size=16, lr=1e-3, fff_lr=1e-3, checkpoint_every=5, **kw))


def test_end_to_end_lowers_the_heldout_error(tokenizer, texts):
    model = fffconvert.convert(hard_tiny_bert(), config(steps=60), texts[:600], tokenizer, progress=False,
                               pooling=Pooling())
    e2e = model.config.fff["end_to_end"]
    before, after = e2e["layerwise_only"], e2e["after"]
    assert e2e["heldout_texts"] == 30
    assert after["hidden_fvu"][-1] < 0.7 * before["hidden_fvu"][-1], (before, after)
    assert after["embedding_cosine"] > before["embedding_cosine"]
    assert type(model).__name__ == "FFFBertModel" and not model.training


def test_a_run_that_moves_away_from_the_source_says_so(tokenizer, texts):
    cfg = config(steps=10)
    cfg.e2e = replace(cfg.e2e, lr=0.3, fff_lr=0.3)  # far too high: the model leaves its source
    with pytest.warns(UserWarning, match="further from its source"):
        model = fffconvert.convert(hard_tiny_bert(), cfg, texts[:600], tokenizer, progress=False)
    e2e = model.config.fff["end_to_end"]
    assert sum(e2e["after"]["hidden_fvu"]) > sum(e2e["layerwise_only"]["hidden_fvu"]) and e2e["lr"] == 0.3


def test_resumed_conversion_equals_uninterrupted(tokenizer, texts, tmp_path, monkeypatch):
    whole = fffconvert.convert(hard_tiny_bert(), config(), texts[:300], tokenizer, progress=False).state_dict()

    import fffconvert.e2e as e2e_module

    real_fit = e2e_module.fit

    def killed_fit(*a, **kw):  # the process dies after 12 steps (checkpoints every 5)
        real_fit(*a, **{**kw, "stop_after": 12})
        raise KeyboardInterrupt

    monkeypatch.setattr(e2e_module, "fit", killed_fit)
    with pytest.raises(KeyboardInterrupt):
        fffconvert.convert(hard_tiny_bert(), config(), texts[:300], tokenizer, progress=False, checkpoint_dir=tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"run.json", "layerwise", "e2e"}
    assert json.loads((tmp_path / "run" / "e2e" / "state.json").read_text())["step"] == 10
    monkeypatch.setattr(e2e_module, "fit", real_fit)
    resumed = fffconvert.convert(hard_tiny_bert(), config(), texts[:300], tokenizer, progress=False,
                                 checkpoint_dir=tmp_path / "run", resume=True).state_dict()
    assert resumed.keys() == whole.keys()
    assert all(torch.allclose(resumed[k], whole[k], atol=1e-6) for k in whole)


def test_resume_refuses_checkpoints_of_other_settings(tokenizer, texts, tmp_path):
    fffconvert.convert(hard_tiny_bert(), config(steps=5), texts[:300], tokenizer, progress=False,
                       checkpoint_dir=tmp_path / "run")
    with pytest.raises(UserError, match="other settings"):
        fffconvert.convert(hard_tiny_bert(), config(steps=6), texts[:300], tokenizer, progress=False,
                           checkpoint_dir=tmp_path / "run", resume=True)


def test_per_layer_shapes_and_a_budget(tokenizer, texts, tmp_path):
    cfg = FFFConfig(depth=[2, 3], leaf_width=[4, 1], calib_tokens=3000, e2e=E2EConfig(steps=0))
    model = fffconvert.convert(tiny_model("bert", "Model"), cfg, texts[:300], tokenizer, progress=False)
    assert [(r["depth"], r["leaf_width"]) for r in model.config.fff["layers"]] == [(2, 4), (3, 1)]
    fffconvert.save_pretrained(model, tmp_path / "m", tokenizer)
    loaded = fffconvert.from_pretrained(tmp_path / "m")
    assert [(f.depth, f.leaf_width) for f in fffconvert.surgery.fff_layers(loaded)] == [(2, 4), (3, 1)]

    cfg = FFFConfig(depth=2, neurons_per_token=6, calib_tokens=3000, e2e=E2EConfig(steps=0))
    model = fffconvert.convert(hard_tiny_bert(), cfg, texts[:300], tokenizer, progress=False)
    rows = model.config.fff["layers"]
    assert sum(r["depth"] + r["leaf_width"] for r in rows) <= 2 * 6 and all(r["leaf_width"] >= 1 for r in rows)
    assert all("fvu_by_width" in r for r in rows)

    # a budget near the FFN's width (64): the leaf widths measured stay below it (61 at depth 2)
    cfg = FFFConfig(depth=2, neurons_per_token=40, calib_tokens=3000, e2e=E2EConfig(steps=0))
    rows = fffconvert.convert(hard_tiny_bert(), cfg, texts[:300], tokenizer, progress=False).config.fff["layers"]
    assert all(max(map(int, r["fvu_by_width"])) == 61 and 2 + r["leaf_width"] < 64 for r in rows)


@pytest.mark.parametrize("kw,message", [
    (dict(depth=[2, 2, 2]), "lists 3 values for a model with 2 FFN layers"),
    (dict(depth=2, leaf_width=70), "not fewer than the dense FFN's 64 neurons"),
    (dict(depth=2, neurons_per_token=2), "leaves no neurons"),
    (dict(depth=2, neurons_per_token=8, leaf_width=2), "not both"),
    (dict(depth=2, neurons_per_token=100), "leaves of 98 neurons on average at depth 2, more than the 61"),
])
def test_shape_mistakes_are_refused_before_any_work(kw, message, tokenizer, texts):
    with pytest.raises(UserError, match=message):
        fffconvert.convert(tiny_model("bert", "Model"), FFFConfig(calib_tokens=3000, **kw), texts[:300], tokenizer,
                           progress=False)


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, tokenizer, texts):
    src = tmp_path_factory.mktemp("src") / "dense"
    dense = hard_tiny_bert()
    dense.save_pretrained(src)
    tokenizer.save_pretrained(src)
    model = fffconvert.convert(hard_tiny_bert(), config(steps=5), texts[:300], tokenizer, progress=False)
    model.config.fff["source"] = str(src)
    out = tmp_path_factory.mktemp("conv") / "m"
    fffconvert.save_pretrained(model, out, tokenizer)
    return out


def test_eval_reports_its_fields(converted_dir, tmp_path, texts):
    data = tmp_path / "heldout.txt"
    data.write_text("\n".join(texts[-50:]))
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["eval", str(converted_dir), "--data", str(data), "--json", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "hidden-state FVU, layer 2" in r.output and "forward ms" in r.output
    result = json.loads(out.read_text())
    assert len(result["hidden_fvu"]) == 2 and result["texts"] == 50
    assert 0 <= result["hidden_fvu"][0] and -1 <= result["token_cosine"] <= 1
    assert {"dense", "fff", "speedup", "batch"} <= result["speed_ms"].keys()


@pytest.mark.parametrize("backend", ["auto", "torchao"])
def test_eval_int8_reports_what_int8_costs(backend, converted_dir, tmp_path, texts):
    if backend == "torchao":
        pytest.importorskip("torchao", reason="torchao (pip install fffconvert[quant])")
    data = tmp_path / "heldout.txt"
    data.write_text("\n".join(texts[-20:]))
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["eval", str(converted_dir), "--data", str(data), "--json", str(out), "--device", "cpu",
                                  "--int8", "--int8-backend", backend])
    assert r.exit_code == 0, r.output
    named = "torch" if backend == "auto" else backend
    assert f"in int8 ({named} backend)" in r.output
    result = json.loads(out.read_text())
    assert result["int8"]["backend"] == named and result["int8"]["texts"] == 20
    assert result["int8"]["token_cosine"] > 0.9 * result["token_cosine"]  # near the float model's, not a broken one


def test_eval_reports_each_file_of_a_folder(converted_dir, tmp_path, texts):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("\n".join(texts[-40:]))
    (folder / "b.txt").write_text("\n".join(" ".join(reversed(t.split())) for t in texts[-80:-40]))
    run = lambda data, out, *more: CliRunner().invoke(  # noqa: E731
        main, ["eval", str(converted_dir), "--data", str(data), "--json", str(out), "--device", "cpu", *more])
    r = run(folder, tmp_path / "all.json", "--max-texts", "30")
    assert r.exit_code == 0, r.output
    assert "By source:" in r.output and "| a.txt | 30 |" in r.output and "| b.txt | 30 |" in r.output
    result = json.loads((tmp_path / "all.json").read_text())
    assert result["texts"] == 60 and result["by_source"].keys() == {"a.txt", "b.txt"}
    # each file's row is what that file alone measures
    assert run(folder / "a.txt", tmp_path / "a.json", "--max-texts", "30").exit_code == 0
    alone = json.loads((tmp_path / "a.json").read_text())
    assert "by_source" not in alone and alone["texts"] == 30
    assert result["by_source"]["a.txt"]["token_cosine"] == pytest.approx(alone["token_cosine"], abs=1e-5)
    assert result["by_source"]["a.txt"]["hidden_fvu"] == pytest.approx(alone["hidden_fvu"], abs=1e-5)


def test_eval_refuses_a_folder_that_is_not_converted(tmp_path, tokenizer):
    dense = tmp_path / "dense"
    tiny_model("bert", "Model").save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    r = CliRunner().invoke(main, ["eval", str(dense)])
    assert r.exit_code == 2 and r.output.strip().startswith("Error:") and "not a model converted by fffconvert" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_neighbour_agreement_needs_more_texts_than_neighbours():
    from fffconvert.measures import neighbour_agreement

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 16, generator=g), torch.randn(40, 16, generator=g)
    assert neighbour_agreement(a, a) == 1.0 and neighbour_agreement(a, b) < 0.6  # unrelated: about 10 of 39
    assert neighbour_agreement(a[:11], b[:11]) is None  # every other text would be a neighbour: 1 for any models
