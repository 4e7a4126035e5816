"""Side-by-side timings of FFF against torch's own dense FFN, in one process.

(a) one FFN layer: torch dense (nn.Linear, activation, nn.Linear) vs the FFF kernel vs the FFF
    PyTorch reference, same dtype, for several token counts;
(b) a whole model: a BERT-shaped transformers model (random weights) vs the same model with every
    FFN converted, eagerly and (`compile`) under torch.compile; on CUDA also replayed as CUDA
    graphs, with the host's time per eager forward (an eager forward is often paced by the host's
    Python and launches).
Implementations are timed in interleaved rounds of warm blocks (A, B, C, A, B, C, ...), so that a
noisy machine slows them alike; each figure is the median over rounds, with min and max. CPU times use the
wall clock; CUDA times use CUDA events.
"""
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .layer import FFF
from .optimize import capture, optimize
from .surgery import empty_fff_model, fff_layers

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class BenchConfig:
    device: str = "cpu"
    dtype: str = "float32"
    hidden: int = 768
    ffn: int = 3072
    depth: int = 11
    leaf_width: int = 2
    tokens: list = field(default_factory=lambda: [1, 128, 2048, 16384])
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None  # CPU threads (default: torch's)
    model: bool = True  # also time a whole BERT-shaped model
    compile: bool = False  # also time the whole models under torch.compile
    batch: int = 8
    seq_len: int = 128
    layers: int = 12
    seed: int = 0


def _time_block(fn, calls: int, cuda: bool) -> float:
    """Seconds per call over `calls` back-to-back calls."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / calls
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls


def time_calls(fns: dict, cfg: BenchConfig, block_s: float = 0.05) -> dict:
    """{name: (median, min, max) seconds per call}. Each round times one block of back-to-back calls
    of every implementation in turn (A, B, C, A, B, C, ...): a slow spell of a noisy machine hits
    all of them, and each block runs warm, as a layer does inside a model."""
    cuda = cfg.device == "cuda"
    calls = {}
    for name, fn in fns.items():
        for _ in range(cfg.warmup):
            fn()
        once = _time_block(fn, 1, cuda)
        calls[name] = max(1, min(1000, int(block_s / max(once, 1e-7))))
    samples = {k: [] for k in fns}
    for _ in range(cfg.repeats):
        for name, fn in fns.items():
            samples[name].append(_time_block(fn, calls[name], cuda))
    return {k: (statistics.median(v), min(v), max(v)) for k, v in samples.items()}


def _routed_layer(cfg: BenchConfig, dtype) -> FFF:
    """An FFF with random weights whose routing spreads tokens over all leaves, as a trained one does."""
    layer = FFF(cfg.hidden, cfg.depth, cfg.leaf_width, "gelu")
    with torch.no_grad():
        layer.node_weight.normal_()
        layer.node_bias.zero_()
        layer.leaf_bias.normal_(0, 0.02)
    return layer.to(cfg.device, dtype).eval()


def bench_layer(cfg: BenchConfig) -> list[dict]:
    dtype = DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(cfg.seed)
    dense = nn.Sequential(nn.Linear(cfg.hidden, cfg.ffn), nn.GELU(), nn.Linear(cfg.ffn, cfg.hidden))
    dense = dense.to(cfg.device, dtype).eval()
    layer = _routed_layer(cfg, dtype)
    rows = []
    for n in cfg.tokens:
        x = torch.randn(n, cfg.hidden, generator=gen).to(cfg.device, dtype)
        with torch.inference_mode():
            fns = {"dense": lambda: dense(x), "fff_kernel": lambda: layer(x), "fff_reference": lambda: layer.hard_forward(x)}
            t = time_calls(fns, cfg)
        rows.append({"tokens": n, **{f"{k}_ms": [round(v * 1e3, 4) for v in t[k]] for k in t},
                     "speedup_kernel": t["dense"][0] / t["fff_kernel"][0],
                     "speedup_reference": t["dense"][0] / t["fff_reference"][0]})
    return rows


def bert_models(cfg: BenchConfig):
    """A BERT-shaped model with random weights, the same model with every FFN converted (routing
    spread over all leaves), both on cfg's device and dtype in eval mode, and input_ids."""
    import transformers

    dtype = DTYPES[cfg.dtype]
    config = transformers.BertConfig(hidden_size=cfg.hidden, intermediate_size=cfg.ffn, num_hidden_layers=cfg.layers,
                                     num_attention_heads=max(1, cfg.hidden // 64),
                                     max_position_embeddings=max(512, cfg.seq_len))
    torch.manual_seed(cfg.seed)
    dense = transformers.BertModel(config).to(cfg.device, dtype).eval()
    fff = transformers.BertModel(config)
    empty_fff_model(fff, cfg.depth, cfg.leaf_width)
    for layer in fff_layers(fff):
        layer.load_state_dict(_routed_layer(cfg, torch.float32).state_dict())
    fff = fff.to(cfg.device, dtype).eval()
    ids = random_ids(config.vocab_size, cfg.batch, cfg.seq_len, cfg.device)
    return dense, fff, ids


def random_ids(vocab_size: int, batch: int, seq_len: int, device) -> torch.Tensor:
    """Token ids for timing: ordinary words (above the first 1000 ids, where BERT-like vocabularies
    keep special and unused tokens) when the vocabulary has them."""
    low = 1000 if vocab_size > 2000 else 0
    return torch.randint(low, vocab_size, (batch, seq_len), device=device)


def bench_model(cfg: BenchConfig) -> dict:
    return {"batch": cfg.batch, "seq_len": cfg.seq_len, "layers": cfg.layers, **time_models(*bert_models(cfg), cfg)}


def time_models(dense, fff, ids, cfg: BenchConfig) -> dict:
    """Forward times of two models on input_ids `ids`: eager, and with `cfg.compile` under
    torch.compile (default mode, both models alike). On CUDA, also each forward replayed as one CUDA
    graph, each model through `optimize` (what users run: graphs with the inputs copied in and the
    outputs copied out), and the host's time for one eager forward call, started on an idle GPU (it
    includes any waits for the GPU inside the call; a model whose GPU work is shorter than this is
    paced by the host)."""
    models = {"dense": dense, "fff": fff}
    if cfg.compile:
        models.update({f"{k}_compiled": torch.compile(m) for k, m in list(models.items())})
    fns = {k: (lambda m=m: m(input_ids=ids)) for k, m in models.items()}
    out = {}
    with torch.inference_mode():
        t = time_calls(fns, cfg)
        if cfg.device == "cuda":
            out.update({f"{k}_host_ms": round(_host_ms(fns[k]), 3) for k in ("dense", "fff")})
            t.update(time_calls({f"{k}_graph": capture(fn, warmup=3)[0].replay for k, fn in fns.items()}, cfg))
            fast = {k: optimize(models[k]) for k in ("dense", "fff")}
            t.update(time_calls({f"{k}_optimized": (lambda m=m: m(input_ids=ids)) for k, m in fast.items()}, cfg))
    out.update({f"{k}_ms": [round(v * 1e3, 3) for v in t[k]] for k in t})
    for mode in MODEL_MODES:
        if f"dense{mode}" in t:
            out[f"speedup{mode}"] = t[f"dense{mode}"][0] / t[f"fff{mode}"][0]
    return out


# Ways a whole model runs in `time_models`, by the suffix of their keys.
MODEL_MODES = {"": "eager", "_graph": "CUDA graph", "_optimized": "fffconvert.optimize",
               "_compiled": "torch.compile", "_compiled_graph": "torch.compile + CUDA graph"}


def _host_ms(fn, rounds: int = 10) -> float:
    """Median host time of one forward call (the GPU is idle at the start of each)."""
    times = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e3


def environment(cfg: BenchConfig) -> dict:
    import transformers

    env = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "cpu": _cpu_name()}
    if cfg.device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    from . import kernels

    env["kernel"] = "compiled" if kernels.kernel_for(torch.empty(1, device=cfg.device, dtype=DTYPES[cfg.dtype])) else "reference"
    return env


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run(cfg: BenchConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    macs_dense = 2 * cfg.hidden * cfg.ffn
    macs_fff = (cfg.depth + 2 * cfg.leaf_width) * cfg.hidden
    result = {"config": asdict(cfg), "environment": environment(cfg),
              "flop_ratio": macs_dense / macs_fff, "layer": bench_layer(cfg)}
    if cfg.model:
        result["model"] = bench_model(cfg)
    return result


def format_report(result: dict) -> str:
    cfg, env = result["config"], result["environment"]
    where = env.get("gpu") or f"{env['cpu']}, {env['threads']} threads"
    lines = [f"fffconvert bench: {cfg['device']} ({where}), {cfg['dtype']}, torch {env['torch']}, "
             f"transformers {env.get('transformers', '?')}, FFF {env['kernel']} kernel",
             f"FFN layer H={cfg['hidden']} F={cfg['ffn']} vs FFF depth {cfg['depth']} leaf width {cfg['leaf_width']}: "
             f"FLOP ratio {result['flop_ratio']:.0f}x (the limit)",
             "ms per call: median [min-max] over interleaved rounds", "",
             "| tokens | torch dense | FFF kernel | FFF reference | kernel speedup | reference speedup |",
             "|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v: f"{v[0]:.3f} [{v[1]:.3f}-{v[2]:.3f}]"  # noqa: E731
    for r in result["layer"]:
        lines.append(f"| {r['tokens']} | {fmt(r['dense_ms'])} | {fmt(r['fff_kernel_ms'])} | {fmt(r['fff_reference_ms'])} "
                     f"| {r['speedup_kernel']:.1f}x | {r['speedup_reference']:.1f}x |")
    if "model" in result:
        m = result["model"]
        lines += ["", f"Whole BERT-shaped model ({m['layers']} layers, random weights), batch {m['batch']} x {m['seq_len']} tokens:"]
        lines += [f"{name}: dense {fmt(m[f'dense{mode}_ms'])} ms, FFF {fmt(m[f'fff{mode}_ms'])} ms: {m[f'speedup{mode}']:.2f}x"
                  for mode, name in MODEL_MODES.items() if f"speedup{mode}" in m]
        if "dense_host_ms" in m:
            lines.append(f"host time of one eager forward call: dense {m['dense_host_ms']:.3f} ms, FFF {m['fff_host_ms']:.3f} ms")
    return "\n".join(lines)


def save(result: dict, path):
    """Write the results as JSON, atomically (a killed run leaves no half file)."""
    from .atomic import write_text

    write_text(path, json.dumps(result, indent=2, sort_keys=True))
