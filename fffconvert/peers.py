"""`fffconvert bench --peers`: a converted model against what a CPU user would run instead.

Whole models, side by side in one process, timed in interleaved rounds (bench.time_calls):
torch dense float32 (eager), ONNX Runtime float32 and dynamic int8 (QInt8) of the dense model
when `onnxruntime` is installed, the FFF model in float32 (its kernel), the FFF model with its
remaining Linear layers in int8 (quantize.py: torch's fbgemm path, eager), and, when `torchao` is
installed, the same with torchao's int8 run as `optimize` runs it (compiled; each shape's first,
untimed calls compile it). ONNX Runtime gets the same number of threads as torch, with its
intra-op spinning off: a spinning pool keeps the cores busy after each run and slows whatever is
timed next on a small machine.
"""
import copy
import logging
import tempfile
from pathlib import Path

import torch

from .bench import BenchConfig, random_ids, time_calls
from .optimize import optimize
from .quantize import quantize

SHAPES = ((1, 16), (1, 128), (8, 128))


class _Encoder(torch.nn.Module):
    """input_ids -> the model's first output (a base model's last hidden state, a head's logits): the
    graph that ONNX export sees."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids)[0]


def onnx_sessions(dense, folder: Path, threads: int) -> dict:
    """{"ort fp32": run, "ort int8": run} for the dense model, or {} without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return {}
    fp32, int8 = folder / "dense.onnx", folder / "dense-int8.onnx"
    ids = torch.randint(1000, 2000, (2, 16))
    with torch.no_grad():
        torch.onnx.export(_Encoder(dense).eval(), (ids,), str(fp32), dynamo=True, input_names=["input_ids"],
                          dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}}, verbose=False)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer advises pre-processing at WARNING
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in (("ort fp32", fp32), ("ort int8", int8))}
    return {name: (lambda ids, s=s: s.run(None, {"input_ids": ids.numpy()})) for name, s in sessions.items()}


def bench_peers(dense, fff, cfg: BenchConfig, shapes=SHAPES) -> list[dict]:
    """Median ms of each runtime for each (batch, tokens), and its speedup over torch dense."""
    dense, fff = dense.float().eval(), fff.float().eval()
    fff_int8 = quantize(copy.deepcopy(fff), "int8")
    runs = {"torch dense fp32": lambda ids: dense(input_ids=ids), "fff fp32": lambda ids: fff(input_ids=ids),
            "fff + int8": lambda ids: fff_int8(input_ids=ids)}
    if peer_versions()["torchao"]:
        compiled = optimize(quantize(copy.deepcopy(fff), "int8", backend="torchao"))
        runs["fff + int8 compiled"] = lambda ids: compiled(input_ids=ids)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs.update(onnx_sessions(dense, Path(tmp), torch.get_num_threads()))
        for batch, tokens in shapes:
            ids = random_ids(dense.config.vocab_size, batch, tokens, "cpu")
            with torch.inference_mode():
                t = time_calls({name: (lambda run=run: run(ids)) for name, run in runs.items()}, cfg)
            base = t["torch dense fp32"][0]
            rows.append({"batch": batch, "tokens": tokens,
                         "ms": {k: [round(x * 1e3, 3) for x in v] for k, v in t.items()},
                         "speedup": {k: base / v[0] for k, v in t.items()}})
    return rows


def peer_versions() -> dict:
    """Versions of the optional runtimes compared (None: not installed)."""
    from importlib import metadata

    found = {}
    for name in ("onnxruntime", "torchao"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def format_peers(rows: list[dict]) -> str:
    names = list(rows[0]["ms"])
    lines = ["| batch x tokens | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in rows:
        cells = [f"{r['ms'][n][0]:.1f} ms" + ("" if n == "torch dense fp32" else f" ({r['speedup'][n]:.2f}x)") for n in names]
        lines.append(f"| {r['batch']} x {r['tokens']} | " + " | ".join(cells) + " |")
    lines.append("median ms of interleaved rounds; (x) = speedup over torch dense fp32")
    return "\n".join(lines)
