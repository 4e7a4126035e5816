"""The CLI: a small conversion that works, and every user mistake -> one line, exit 2, nothing written."""
import pytest
import transformers
from click.testing import CliRunner

from fffconvert.cli import main
from conftest import tiny_model


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("models") / "tiny-bert"
    tiny_model("bert", "ForSequenceClassification").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory, texts):
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text("\n".join(texts[:80]))
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_convert_a_local_model(tiny_bert_dir, calib_file, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(tiny_bert_dir.parent)  # the source given relative to here: recorded absolute, for eval anywhere
    r = run(tiny_bert_dir.name, "--depth", 2, "--calib-data", calib_file, "--steps", 2, "--e2e-steps", 2, "--output", out)
    assert r.exit_code == 0, r.output
    assert "clustering init" in r.output and "after end-to-end" in r.output and "Saved to" in r.output
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left behind
    import fffconvert

    model = fffconvert.from_pretrained(out)
    assert isinstance(model, transformers.BertForSequenceClassification) and type(model).__name__.startswith("FFF")
    assert model.config.fff["source"] == str(tiny_bert_dir.resolve())


def test_help_lists_options_and_examples():
    r = run("--help")
    assert r.exit_code == 0 and "bench" in r.output and "Examples" in r.output
    r = run("convert", "--help")
    assert r.exit_code == 0 and "--leaf-width" in r.output and "--calib-data" in r.output


def write_gpt2(path):
    transformers.GPT2Model(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2)).save_pretrained(path)
    return path


def write_pickle_only(path):
    path.mkdir()
    tiny_model("bert").config.save_pretrained(path)
    (path / "pytorch_model.bin").write_bytes(b"not even read")
    return path


ERRORS = {
    "missing path": (lambda d, m, c: ["./no/such/model", "--depth", 2], "does not exist"),
    "hub name offline": (lambda d, m, c: ["nobody-xyz/no-such-model", "--depth", 2], "cannot load"),
    "depth < 1": (lambda d, m, c: [m, "--depth", 0, "--calib-data", c], "'--depth': must be >= 1"),
    "too deep": (lambda d, m, c: [m, "--depth", 8, "--calib-tokens", 1000, "--calib-data", c], "depth 8 needs at least"),
    "tree too large": (lambda d, m, c: [m, "--depth", 12, "--calib-data", c], "more than 16x the dense FFN"),
    "leaf width < 1": (lambda d, m, c: [m, "--depth", 2, "--leaf-width", 0, "--calib-data", c], "'--leaf-width': must be >= 1"),
    "unsupported": (lambda d, m, c: [write_gpt2(d / "gpt2"), "--depth", 2, "--calib-data", c], "'gpt2' is not supported"),
    "missing calib": (lambda d, m, c: [m, "--depth", 2, "--calib-data", d / "nope.txt"], "cannot read text file"),
    "empty calib": (lambda d, m, c: [m, "--depth", 2, "--calib-data", _write(d / "e.txt", b"\n \n")], "has no text"),
    "binary calib": (lambda d, m, c: [m, "--depth", 2, "--calib-data", _write(d / "b.txt", b"\xff\xfe\x00")], "cannot read"),
    "pickle only": (lambda d, m, c: [write_pickle_only(d / "pk"), "--depth", 2, "--calib-data", c], "--allow-pickle"),
    "output exists": (lambda d, m, c: [m, "--depth", 2, "--calib-data", c, "--output", _mkdir(d / "out")], "exists"),
}


def _write(path, data):
    path.write_bytes(data)
    return path


def _mkdir(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_user_errors_are_one_line_exit_2_and_write_nothing(case, tiny_bert_dir, calib_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_args, message = ERRORS[case]
    args = make_args(tmp_path, tiny_bert_dir, calib_file)
    if "--output" not in args:
        args += ["--output", tmp_path / "result"]
    before = set(tmp_path.rglob("*"))
    r = run(*args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert "Traceback" not in r.output
    assert set(tmp_path.rglob("*")) == before  # nothing written


def test_own_warnings_print_as_one_line(monkeypatch):
    import warnings

    from fffconvert import cli

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    CliRunner().invoke(main, ["--help"])
    assert warnings.formatwarning is cli._warning_line
    assert warnings.formatwarning("try a lower --e2e-lr", UserWarning, cli.__file__, 1) == \
        "Warning: try a lower --e2e-lr\n"
    assert "UserWarning: other" in warnings.formatwarning("other", UserWarning, "/elsewhere/module.py", 3)


def test_importing_fffconvert_beside_torchao_is_quiet_but_keeps_other_warnings():
    import subprocess
    import sys

    pytest.importorskip("torchao", reason="torchao (pip install fffconvert[quant])")
    code = "import logging, fffconvert, torchao; logging.getLogger('torchao').warning('a warning of its own')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Failed to load" not in r.stderr and "Enum subclass" not in r.stderr
    assert "a warning of its own" in r.stderr
