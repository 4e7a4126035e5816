"""`fffconvert bench` on tiny shapes: the table, the JSON, and its refusals (timings are not asserted)."""
import json

from click.testing import CliRunner

import fffconvert
from fffconvert.cli import main
from conftest import tiny_model


def test_bench_writes_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", "--hidden", "64", "--ffn", "256", "--depth", "4", "--leaf-width", "2",
                                  "--tokens", "1,7", "--repeats", "2", "--warmup", "1", "--batch", "2", "--seq-len", "8",
                                  "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "| 7 |" in r.output and "FLOP ratio" in r.output and "Whole BERT-shaped model" in r.output
    result = json.loads(out.read_text())
    assert [row["tokens"] for row in result["layer"]] == [1, 7]
    assert result["flop_ratio"] == 2 * 64 * 256 / ((4 + 4) * 64)
    row = result["layer"][1]
    assert len(row["dense_ms"]) == 3 and row["speedup_kernel"] > 0
    assert result["model"]["speedup"] > 0 and result["environment"]["threads"] >= 1


def test_bench_refuses_bad_input():
    r = CliRunner().invoke(main, ["bench", "--depth", "0"])
    assert r.exit_code == 2 and "Error:" in r.output
    r = CliRunner().invoke(main, ["bench", "--tokens", "1,x"])
    assert r.exit_code == 2


def test_bench_peers_table_and_json(tmp_path):
    out = tmp_path / "peers.json"
    r = CliRunner().invoke(main, ["bench", "--peers", "--hidden", "64", "--ffn", "256", "--depth", "4", "--leaf-width", "2",
                                  "--repeats", "2", "--warmup", "1", "--device", "cpu", "--json", str(out)])
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    rows = result["peers"]
    assert [(row["batch"], row["tokens"]) for row in rows] == [(1, 16), (1, 128), (8, 128)]
    names = {"torch dense fp32", "fff fp32", "fff + int8"}
    try:
        import onnxruntime  # noqa: F401
        names |= {"ort fp32", "ort int8"}
    except ImportError:
        pass
    try:
        import torchao  # noqa: F401
        names |= {"fff + int8 compiled"}
    except ImportError:
        pass
    assert set(rows[0]["ms"]) == names and rows[0]["speedup"]["torch dense fp32"] == 1.0
    assert "| 8 x 128 |" in r.output


def test_bench_peers_on_a_converted_classifier(tmp_path, tokenizer, texts):
    """A user's folder with a task head (its logits are what ONNX Runtime is given to compute)."""
    dense = tiny_model("bert", "ForSequenceClassification")
    dense.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    cfg = fffconvert.FFFConfig(depth=2, calib_tokens=1500, e2e=fffconvert.E2EConfig(steps=0))
    fff = fffconvert.convert(tiny_model("bert", "ForSequenceClassification"), cfg, texts[:150], tokenizer, progress=False)
    fffconvert.save_pretrained(fff, tmp_path / "fff", tokenizer)
    r = CliRunner().invoke(main, ["bench", "--peers", "--converted", str(tmp_path / "fff"), "--dense", str(tmp_path / "dense"),
                                  "--repeats", "1", "--warmup", "0", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "| 8 x 128 |" in r.output and "fff + int8" in r.output


def test_quantize_int8_keeps_fff_layers_and_is_recorded(tmp_path, tokenizer, texts):
    import torch

    import fffconvert
    from fffconvert.convert import FFFConfig
    from fffconvert.e2e import E2EConfig
    from fffconvert.errors import UserError
    from fffconvert.quantize import quantize
    from fffconvert.surgery import fff_layers
    from conftest import tiny_model

    model = fffconvert.convert(tiny_model("bert", "Model"), FFFConfig(depth=2, calib_tokens=1500, e2e=E2EConfig(steps=0)),
                               texts[:150], tokenizer, progress=False)
    fffconvert.save_pretrained(model, tmp_path / "m", tokenizer)
    batch = tokenizer(texts[200:204], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        q = quantize(model, "int8")
        out = q(**batch).last_hidden_state
    assert len(fff_layers(q)) == 2 and not any(type(m) is torch.nn.Linear for m in q.modules())
    qlinears = [m for m in q.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert qlinears and all(m.weight().qscheme() == torch.per_channel_affine for m in qlinears)  # a scale per row
    assert torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1)).min() > 0.99
    with __import__("pytest").raises(UserError, match="float32"):
        fffconvert.save_pretrained(q, tmp_path / "q", tokenizer)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["fff"]["quantize"] = "int8"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    loaded = fffconvert.from_pretrained(tmp_path / "m")
    assert not any(type(m) is torch.nn.Linear for m in loaded.modules())
    assert any(type(m) is torch.nn.Linear for m in fffconvert.from_pretrained(tmp_path / "m", quantize=False).modules())


def test_quantize_int8_with_torchao_keeps_the_outputs_and_is_not_saved(tmp_path, tokenizer, texts):
    import pytest
    import torch

    pytest.importorskip("torchao", reason="torchao (pip install fffconvert[quant])")
    import fffconvert
    from fffconvert.convert import FFFConfig
    from fffconvert.e2e import E2EConfig
    from fffconvert.errors import UserError
    from fffconvert.quantize import quantize, quantized_by_torchao
    from conftest import tiny_model

    model = fffconvert.convert(tiny_model("bert", "Model"), FFFConfig(depth=2, calib_tokens=1500, e2e=E2EConfig(steps=0)),
                               texts[:150], tokenizer, progress=False)
    batch = tokenizer(texts[200:204], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        q = quantize(model, "int8", backend="torchao")
        out = q(**batch).last_hidden_state
    assert quantized_by_torchao(q) and q.config.fff["quantize"] == "int8"
    assert torch.nn.functional.cosine_similarity(out.flatten(1), ref.flatten(1)).min() > 0.99
    with pytest.raises(UserError, match="float32"):
        fffconvert.save_pretrained(q, tmp_path / "q", tokenizer)
