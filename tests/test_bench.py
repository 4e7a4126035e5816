"""`fffconvert bench` on tiny shapes: the table, the JSON, and its refusals (timings are not asserted)."""
import json

from click.testing import CliRunner

from fffconvert.cli import main


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
