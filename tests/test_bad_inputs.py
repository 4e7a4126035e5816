"""Every user mistake and every damaged input: exit status 2 (or UserError in Python), one
`Error:` line, nothing written, an existing output left as it was. Built on the fly from tiny models."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import fffconvert
from fffconvert.cli import main
from fffconvert.convert import FFFConfig
from fffconvert.e2e import E2EConfig
from fffconvert.errors import UserError
from conftest import tiny_model

CONVERT = {"--depth": "2", "--steps": "1", "--e2e-steps": "1", "--e2e-batch-size": "4", "--calib-tokens": "1500",
           "--device": "cpu"}


def with_defaults(args):
    """The case's arguments, then CONVERT's small settings for every option the case does not set."""
    return args + [x for k, v in CONVERT.items() if k not in args for x in (k, v)]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer, texts):
    """Sound inputs to damage: a tiny dense folder, a text file, a converted folder."""
    root = tmp_path_factory.mktemp("base")
    dense = root / "dense"
    tiny_model("bert", "ForSequenceClassification").save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    (root / "text.txt").write_text("\n".join(texts[:150]))
    model = fffconvert.convert(tiny_model("bert", "Model"), FFFConfig(depth=2, calib_tokens=1500, e2e=E2EConfig(steps=0)),
                               texts[:150], tokenizer, progress=False)
    fffconvert.save_pretrained(model, root / "converted", tokenizer)
    return root


def copy(base, name, tmp):
    shutil.copytree(base / name, tmp / name)
    return tmp / name


def remade(base, tmp, **changes):
    """The dense folder with its config changed (and new weights to fit it); the same tokenizer."""
    folder = copy(base, "dense", tmp)
    config = transformers.BertConfig.from_pretrained(folder)
    config.update(changes)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def another_model(base, tmp):
    """A dense folder of another architecture, with the base's tokenizer."""
    folder = copy(base, "dense", tmp)
    tiny_model("distilbert").save_pretrained(folder)
    return folder


def edit_weights(folder, fn):
    f = folder / "model.safetensors"
    state = load_file(f)
    fn(state)
    save_file(state, f, metadata={"format": "pt"})
    return folder


def edit_config(folder, fn):
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def text_folder(path, files: dict):
    path.mkdir()
    for name, data in files.items():
        write(path / name, data)
    return path


QUERY = "bert.encoder.layer.0.attention.self.query.weight"
FC1 = "bert.encoder.layer.0.intermediate.dense.weight"


def damaged_safetensors(kind):
    def make(b, t):
        f = copy(b, "dense", t)
        st = f / "model.safetensors"
        data = st.read_bytes()
        st.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * 64 + data[64:]}[kind])
        return [f]
    return make


def interrupted(b, t):
    (t / ".result.run").mkdir()
    return b / "dense"


# (name, arguments built from (base, tmp), a fragment of the one Error line)
CLI_CASES = [
    ("missing source", lambda b, t: ["./no/such/model"], "does not exist"),
    ("hub name offline", lambda b, t: ["nobody-xyz/no-such-model"], "cannot load"),
    ("depth 0", lambda b, t: [b / "dense", "--depth", "0"], "'--depth': must be >= 1"),
    ("depth not a number", lambda b, t: [b / "dense", "--depth", "x"], "expected an integer"),
    ("depths for other layers", lambda b, t: [b / "dense", "--depth", "2,2,2"], "lists 3 values"),
    ("leaf width 0", lambda b, t: [b / "dense", "--leaf-width", "0"], "'--leaf-width': must be >= 1"),
    ("leaf width above F - depth", lambda b, t: [b / "dense", "--leaf-width", "63"], "not fewer than the dense FFN's 64"),
    ("tree too large", lambda b, t: [b / "dense", "--depth", "12"], "more than 16x"),
    ("too deep for the text", lambda b, t: [b / "dense", "--depth", "6", "--leaf-width", "1", "--calib-tokens", "200"], "needs at least"),
    ("budget not a number", lambda b, t: [b / "dense", "--neurons-per-token", "nan"], "nan is not a finite number"),
    ("budget above the FFN", lambda b, t: [b / "dense", "--neurons-per-token", "100000"], "smaller budget"),
    ("budget and leaf width", lambda b, t: [b / "dense", "--neurons-per-token", "8", "--leaf-width", "2"], "not both"),
    ("budget below depth", lambda b, t: [b / "dense", "--neurons-per-token", "2"], "leaves no neurons"),
    ("negative e2e steps", lambda b, t: [b / "dense", "--e2e-steps", "-1"], "'--e2e-steps'"),
    ("zero e2e learning rate", lambda b, t: [b / "dense", "--e2e-lr", "0"], "'--e2e-lr'"),
    ("zero calibration tokens", lambda b, t: [b / "dense", "--calib-tokens", "0"], "'--calib-tokens'"),
    ("augment out of range", lambda b, t: [b / "dense", "--e2e-augment", "0.9"], "'--e2e-augment'"),
    ("text file missing", lambda b, t: [b / "dense", "--calib-data", t / "nope.txt"], "no such file"),
    ("infinite e2e learning rate", lambda b, t: [b / "dense", "--e2e-lr", "inf"], "inf is not a finite number"),
    ("seed out of range", lambda b, t: [b / "dense", "--seed", "99999999999999999999"], "'--seed'"),
    ("text file empty", lambda b, t: [b / "dense", "--calib-data", write(t / "e.txt", "\n \n")], "has no text"),
    ("e2e minutes not a number", lambda b, t: [b / "dense", "--e2e-minutes", "nan"], "nan is not a finite number"),
    ("text file binary", lambda b, t: [b / "dense", "--calib-data", write(t / "b.txt", b"\xff\xfe\x00")], "cannot read"),
    ("text file of unknown kind", lambda b, t: [b / "dense", "--calib-data", write(t / "x.pdf", "%PDF")], "unknown format"),
    ("jsonl with a bad line", lambda b, t: [b / "dense", "--calib-data", write(t / "x.jsonl", '{"text": "ok"}\n{bad\n')], "line 2: not JSON"),
    ("jsonl without the column", lambda b, t: [b / "dense", "--calib-data", write(t / "x.jsonl", '{"body2": "ok"}\n')], "--text-column"),
    ("csv with another column", lambda b, t: [b / "dense", "--calib-data", write(t / "x.csv", "a,b\n1,2\n"), "--text-column", "c"], "no column 'c'"),
    ("text folder without text", lambda b, t: [b / "dense", "--calib-data", (t / "empty").mkdir() or t / "empty"], "has no .txt"),
    ("pickle-only source", lambda b, t: [edit_pickle(copy(b, "dense", t))], "--allow-pickle"),
    ("source without weights", lambda b, t: [rm(copy(b, "dense", t), "model.safetensors")], "has no weights"),
    ("source weights truncated", damaged_safetensors("truncated"), "not a readable safetensors file"),
    ("source weights empty", damaged_safetensors("empty"), "is empty"),
    ("source weights garbage", damaged_safetensors("garbage"), "not a readable safetensors file"),
    ("source tensor of wrong shape", lambda b, t: [edit_weights(copy(b, "dense", t), lambda s: s.update({QUERY: torch.zeros(5, 5)}))], "does not match config.json"),
    ("source tensor missing", lambda b, t: [edit_weights(copy(b, "dense", t), lambda s: s.pop(FC1))], "lack"),
    ("source with NaN", lambda b, t: [edit_weights(copy(b, "dense", t), lambda s: s[FC1].fill_(float("nan")))], "NaN"),
    ("source with another model's tokenizer", lambda b, t: [remade(b, t, vocab_size=1000)], "the tokenizer is another model's"),
    ("source without tokenizer", lambda b, t: [rm(copy(b, "dense", t), "tokenizer.json", "vocab.txt")], "no tokenizer files"),
    ("source config not JSON", lambda b, t: [write_cfg(copy(b, "dense", t), "{bad")], "not readable JSON"),
    ("source config without model type", lambda b, t: [edit_config(copy(b, "dense", t), lambda c: c.pop("model_type"))], "model_type"),
    ("source already converted", lambda b, t: [b / "converted"], "already a converted model"),
    ("unsupported architecture", lambda b, t: [gpt2(t)], "'gpt2' is not supported"),
    ("output exists", lambda b, t: [b / "dense", "--output", old_output(t)], "exists; pass --overwrite"),
    ("output under a file", lambda b, t: [b / "dense", "--output", write(t / "afile", "x") / "out"], "is a file"),
    ("output is the source", lambda b, t: [copy(b, "dense", t), "--output", t / "dense", "--overwrite"], "source model's folder"),
    ("interrupted run without --resume", lambda b, t: [interrupted(b, t)], "--resume"),
    ("empty model name", lambda b, t: [""], "'[MODEL]': is empty"),
    ("empty output", lambda b, t: [b / "dense", "--output", ""], "'--output' / '-o': is empty"),
    ("blank text path", lambda b, t: [b / "dense", "--calib-data", "  "], "'--calib-data': is empty"),
    ("text column without text", lambda b, t: [b / "dense", "--text-column", "body"], "give the file too"),
    ("empty text column", lambda b, t: [b / "dense", "--calib-data", write(t / "c.csv", "text\nhi\n"), "--text-column", ""],
     "'--text-column': is empty"),
    ("resume and overwrite", lambda b, t: [b / "dense", "--resume", "--overwrite"], "give one"),
    ("e2e steps and minutes", lambda b, t: [b / "dense", "--e2e-steps", "3", "--e2e-minutes", "1"], "give one"),
]


def rm(folder, *names):
    for n in names:
        (folder / n).unlink(missing_ok=True)
    return folder


def write_cfg(folder, text):
    (folder / "config.json").write_text(text)
    return folder


def edit_pickle(folder):
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"never unpickled")
    return folder


def gpt2(t):
    transformers.GPT2Model(transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2)).save_pretrained(t / "gpt2")
    return t / "gpt2"


def old_output(t):
    (t / "old").mkdir()
    (t / "old" / "keep.txt").write_text("the user's")
    return t / "old"


def snapshot(path):
    return {p: (p.read_bytes() if p.is_file() else None) for p in path.rglob("*")}


@pytest.mark.parametrize("name,make,message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_convert_refuses(name, make, message, base, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [str(a) for a in make(base, tmp_path)]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "result")]
    if "--calib-data" not in args and "--text-column" not in args:  # a case with a column tests its text's absence
        args += ["--calib-data", str(base / "text.txt")]
    before = snapshot(tmp_path)
    r = CliRunner().invoke(main, with_defaults(args))
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and "Loading weights" not in ln and not ln.startswith("[transformers]")]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


CONVERTED_CASES = [
    ("not a folder", lambda b, t: t / "nothing", "does not exist"),
    ("a file", lambda b, t: write(t / "model.safetensors", "x"), "is a file, not a folder"),
    ("a dense folder", lambda b, t: b / "dense", "not a model converted by fffconvert"),
    ("weights truncated", lambda b, t: trunc(copy(b, "converted", t)), "not a readable safetensors file"),
    ("weights missing", lambda b, t: rm(copy(b, "converted", t), "model.safetensors"), "has no model.safetensors"),
    ("depth 40 in config", lambda b, t: edit_config(copy(b, "converted", t), lambda c: set_depth(c, 40)), "impossible tree"),
    ("config no longer matches", lambda b, t: edit_config(copy(b, "converted", t), lambda c: set_depth(c, 3)), "do not match config.json"),
    ("no per-layer shapes", lambda b, t: edit_config(copy(b, "converted", t), lambda c: c["fff"].pop("layers")), "no valid per-layer"),
    ("NaN weights", lambda b, t: edit_weights(copy(b, "converted", t), nan_leaf), "NaN"),
    ("config not JSON", lambda b, t: write_cfg(copy(b, "converted", t), "[1, 2"), "not readable JSON"),
    ("unknown model class", lambda b, t: edit_config(copy(b, "converted", t), lambda c: c.update(architectures=["FFFBertForNothing"])), "does not convert"),
]


def trunc(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return folder


def set_depth(cfg, depth):
    for row in cfg["fff"]["layers"]:
        row["depth"] = depth


def nan_leaf(state):
    key = next(k for k in state if k.endswith("leaf_bias"))
    state[key][0, 0] = float("nan")


@pytest.mark.parametrize("name,make,message", CONVERTED_CASES, ids=[c[0] for c in CONVERTED_CASES])
def test_from_pretrained_refuses(name, make, message, base, tmp_path):
    path = make(base, tmp_path)
    with pytest.raises(UserError) as e:
        fffconvert.from_pretrained(path)
    assert message in str(e.value) and "\n" not in str(e.value)
    r = CliRunner().invoke(main, ["eval", str(path)])  # the same through the CLI: one line, exit 2
    assert r.exit_code == 2 and r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1, r.output


API_CASES = [
    ("texts as one string", lambda b, tok: fffconvert.convert(tiny_model("bert"), SMALL, "one text, not a list", tok),
     "must be a list of strings"),
    ("no texts", lambda b, tok: fffconvert.convert(tiny_model("bert"), SMALL, [], tok), "texts is empty"),
    ("texts of numbers", lambda b, tok: fffconvert.convert(tiny_model("bert"), SMALL, ["a text", 3], tok),
     "texts[1] is a int"),
    ("a converted model", lambda b, tok: fffconvert.convert(fffconvert.from_pretrained(b / "converted"), SMALL, ["a"], tok),
     "converted already"),
    ("eval texts as one string", lambda b, tok: fffconvert.evaluate(fffconvert.from_pretrained(b / "converted"),
                                                                    tiny_model("bert"), tok, "one text"), "list of strings"),
    ("budget not a number", lambda b, tok: FFFConfig(depth=2, neurons_per_token=float("nan")), "finite"),
    ("quantization scheme", lambda b, tok: fffconvert.quantize(fffconvert.from_pretrained(b / "converted"), "int4"),
     "'int4' is not one of int8"),
]
SMALL = FFFConfig(depth=2, calib_tokens=1500, e2e=E2EConfig(steps=0))


@pytest.mark.parametrize("name,call,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_python_api_refuses(name, call, message, base, tokenizer):
    """The same mistakes in Python: a UserError of one line, before any work."""
    with pytest.raises(UserError) as e:
        call(base, tokenizer)
    assert message in str(e.value) and "\n" not in str(e.value)


OTHER_CLI_CASES = [
    ("eval: STS-B not there", lambda b, t: ["eval", b / "converted", "--stsb", t], "no STS-B dev.tsv"),
    ("eval: --json is a folder", lambda b, t: ["eval", b / "converted", "--json", t], "is a folder"),
    ("eval: --json under a file", lambda b, t: ["eval", b / "converted", "--json", write(t / "f", "x") / "r.json"], "is a file"),
    ("eval: data missing", lambda b, t: ["eval", b / "converted", "--data", t / "none.txt"], "no such file"),
    ("eval: data folder without text files", lambda b, t: ["eval", b / "converted", "--data", text_folder(t / "d", {"a.md": "x"}),
                                                           "--json", t / "r.json"], "has no .txt"),
    ("eval: data folder with a binary file", lambda b, t: ["eval", b / "converted", "--data",
                                                           text_folder(t / "d", {"a.txt": "fine\n", "b.txt": b"\x00\x01"}),
                                                           "--json", t / "r.json"], "NUL bytes"),
    ("eval: data folder of empty files", lambda b, t: ["eval", b / "converted", "--data",
                                                       text_folder(t / "d", {"a.txt": "\n", "b.jsonl": ""}),
                                                       "--json", t / "r.json"], "has no text"),
    ("eval: unknown int8 backend", lambda b, t: ["eval", b / "converted", "--int8", "--int8-backend", "onnx"],
     "'--int8-backend'"),
    ("eval: int8 backend without --int8", lambda b, t: ["eval", b / "converted", "--int8-backend", "torch"], "is for --int8"),
    ("eval: source not recorded", lambda b, t: ["eval", b / "converted"], "--dense"),
    ("eval: --dense of another model", lambda b, t: ["eval", b / "converted", "--dense", another_model(b, t)],
     "not this converted model's source: distilbert"),
    ("bench: --dense of another model", lambda b, t: ["bench", "--peers", "--converted", b / "converted", "--dense",
                                                      another_model(b, t)], "not this converted model's source"),
    ("eval: empty folder name", lambda b, t: ["eval", ""], "'CONVERTED': is empty"),
    ("eval: text column without data", lambda b, t: ["eval", b / "converted", "--text-column", "x"], "give the file too"),
    ("eval: empty --json", lambda b, t: ["eval", b / "converted", "--json", ""], "'--json': is empty"),
    ("eval: empty --dense", lambda b, t: ["eval", b / "converted", "--dense", ""], "'--dense': is empty"),
    ("eval: empty --text-column", lambda b, t: ["eval", b / "converted", "--data", write(t / "d.csv", "text\nhi\n"),
                                                "--text-column", " "], "'--text-column': is empty"),
    ("bench: empty --dense", lambda b, t: ["bench", "--peers", "--converted", b / "converted", "--dense", ""], "'--dense': is empty"),
    ("bench: empty --converted", lambda b, t: ["bench", "--converted", ""], "'--converted': is empty"),
    ("bench: threads -1", lambda b, t: ["bench", "--threads", "-1"], "'--threads'"),
    ("bench: hidden 0", lambda b, t: ["bench", "--hidden", "0"], "'--hidden'"),
    ("bench: batch 0", lambda b, t: ["bench", "--batch", "0"], "'--batch'"),
    ("bench: absurd sequence", lambda b, t: ["bench", "--seq-len", "100000000"], "'--seq-len'"),
    ("bench: tokens not numbers", lambda b, t: ["bench", "--tokens", "1,x"], "expected an integer"),
    ("bench: zero tokens", lambda b, t: ["bench", "--tokens", "128,0"], "'--tokens': must be >= 1"),
    ("bench: absurd tokens", lambda b, t: ["bench", "--tokens", "1000000000"], "'--tokens': must be <= 1048576"),
    ("bench: tree as wide as the FFN", lambda b, t: ["bench", "--ffn", "8", "--depth", "4", "--leaf-width", "4"], "below --ffn"),
    ("bench: --json under a file", lambda b, t: ["bench", "--json", write(t / "f", "x") / "b.json"], "is a file"),
]


@pytest.mark.parametrize("name,make,message", OTHER_CLI_CASES, ids=[c[0] for c in OTHER_CLI_CASES])
def test_eval_and_bench_refuse(name, make, message, base, tmp_path):
    args = [str(a) for a in make(base, tmp_path)]
    before = snapshot(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert snapshot(tmp_path) == before


def test_no_device_gpu_is_one_line(base, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = CliRunner().invoke(main, [str(base / "dense"), "--device", "cuda", "--output", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.output.strip() == "Error: --device cuda, but torch sees no CUDA GPU"


KILL_AT_RENAME = """
import os, pathlib, signal, sys
real = pathlib.Path.rename
seen = [0]
def rename(self, target):  # the output's own renames (checkpoints have theirs): killed -9 after the N-th
    out = real(self, target)
    if "out" in (self.name, pathlib.Path(target).name):
        seen[0] += 1
        if seen[0] == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
    return out
pathlib.Path.rename = rename
from fffconvert.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("kill_after", [1, 2])
def test_killed_while_saving_then_recovered(kill_after, base, tmp_path):
    """Killed between the two renames of an --overwrite save (output aside, new one not yet in its
    place) or after both: the next load and the next run find one complete output and no leftovers."""
    out = tmp_path / "out"
    shutil.copytree(base / "converted", out)
    args = with_defaults([str(base / "dense"), "--calib-data", str(base / "text.txt"), "--output", str(out), "--overwrite"])
    r = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(kill_after), *args], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    model = fffconvert.from_pretrained(out)  # the loader finishes the interrupted swap
    assert type(model).__name__ == "FFFBertForSequenceClassification"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.run", "out"]  # no temporaries; its checkpoints
    r = CliRunner().invoke(main, with_defaults([a for a in args if a != "--overwrite"]))
    assert r.exit_code == 2 and "exists" in r.output  # complete: not taken for an interrupted run
    r = CliRunner().invoke(main, args)  # and the same command runs again cleanly
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_killed_while_writing_keeps_the_old_output(base, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(base / "converted", out)
    before = snapshot(out)
    stale = tmp_path / ".out.tmp-999999"  # what a process killed while writing leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    fffconvert.from_pretrained(out)
    assert snapshot(out) == before and not stale.exists()
