"""`convert(model, FFFConfig(...), texts, tokenizer)`: dense transformer -> FFF transformer, in place.

Phases: calibration (capture every FFN's inputs), shapes (given per layer, or chosen for a budget
of neurons per token from what each layer measures), clustering init and layer-wise distillation
(per layer), the module swap, then end-to-end distillation against the dense model (e2e.py).
Every check runs before the model is touched, so a failure never leaves a half-converted model.
With `checkpoint_dir`, the layer-wise result and the end-to-end training are checkpointed and
`resume=True` continues a killed run to the same result. The report lands in `model.config.fff`.
"""
import copy
import hashlib
import json
import math
import random
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import mean

import torch
from tqdm.auto import tqdm

from . import __version__
from .budget import allocate, candidate_widths, width_curve
from .calibrate import capture_ffn_inputs, check_texts, count_tokens, tokenize
from .checkpoint import load_stage, save_stage
from .distill import DistillConfig, distill_layer, layer_report
from .e2e import E2EConfig, distill_model, steps_for_minutes, text_collate
from .errors import UserError
from .layer import FFF, default_leaf_width
from .measures import Pooling, compare
from .modeling import as_fff_model
from .surgery import activation_of, find_ffns, swap_ffns
from .tree_init import DenseFFN, build_tree, fit_leaves, init_from_dense, oracle_outputs

MIN_TOKENS_PER_LEAF = 4
MAX_SIZE_RATIO = 16  # an FFF may hold at most this many times its dense FFN's weights
HELDOUT_TEXTS = 512  # texts kept out of fitting and distillation, for the report


@dataclass
class FFFConfig:
    depth: int | list[int] | None = None  # tree depth D (a list: one per layer); 2^D leaves
    leaf_width: int | list[int] | None = None  # neurons per leaf (a list: one per layer); None: ceil(F / 2^D)
    neurons_per_token: float | None = None  # budget: mean of D + L over the layers; the leaf widths are chosen
    calib_tokens: int = 65536  # calibration tokens captured per layer
    heldout: float = 0.1  # share of them kept out of fitting, for the per-layer FVU
    seed: int = 0
    max_length: int = 128  # tokens per text
    baselines: bool = False  # also report a random init and the top-k oracle per layer
    distill: DistillConfig = field(default_factory=DistillConfig)  # layer-wise
    e2e: E2EConfig = field(default_factory=E2EConfig)  # end-to-end

    def __post_init__(self):
        depths = self.depth if isinstance(self.depth, list) else [self.depth]
        widths = self.leaf_width if isinstance(self.leaf_width, list) else [self.leaf_width]
        if self.depth is None:
            raise UserError("give a tree depth (--depth)")
        if any(d is None or d < 1 for d in depths):
            raise UserError(f"--depth must be >= 1, got {self.depth}")
        if any(w is not None and w < 1 for w in widths):
            raise UserError(f"--leaf-width must be >= 1, got {self.leaf_width}")
        if self.neurons_per_token is not None:
            if not math.isfinite(self.neurons_per_token):
                raise UserError(f"--neurons-per-token must be a finite number, got {self.neurons_per_token}")
            if self.leaf_width is not None:
                raise UserError("give --leaf-width or --neurons-per-token, not both")
            if self.neurons_per_token <= max(depths):
                raise UserError(f"--neurons-per-token {self.neurons_per_token} leaves no neurons for the leaves "
                                f"at depth {max(depths)}: it counts the D routing rows too")
        if self.calib_tokens < 1:
            raise UserError(f"--calib-tokens must be >= 1, got {self.calib_tokens}")
        if not 0 < self.heldout < 1:
            raise UserError(f"heldout must be in (0, 1), got {self.heldout}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.max_length < 2:
            raise UserError(f"max_length must be >= 2, got {self.max_length}")
        if self.distill.steps < 0:
            raise UserError(f"--steps must be >= 0, got {self.distill.steps}")

    def min_tokens(self) -> int:
        """Calibration tokens the depth needs: MIN_TOKENS_PER_LEAF per leaf for fitting, plus held-out."""
        return int(MIN_TOKENS_PER_LEAF * 2**max_depth(self) / (1 - self.heldout)) + 1


def max_depth(config: FFFConfig) -> int:
    return max(config.depth) if isinstance(config.depth, list) else config.depth


def per_layer(value, n: int, name: str) -> list:
    if not isinstance(value, list):
        return [value] * n
    if len(value) != n:
        raise UserError(f"{name} lists {len(value)} values for a model with {n} FFN layers")
    return list(value)


def layer_shapes(config: FFFConfig, n_layers: int, ffn_width: int, hidden: int) -> list[tuple[int, int | None]]:
    """(depth, leaf width) per layer, checked against the dense FFN; width None: chosen for the budget."""
    depths = per_layer(config.depth, n_layers, "--depth")
    widths = per_layer(config.leaf_width, n_layers, "--leaf-width")
    if config.neurons_per_token is None:
        widths = [w or default_leaf_width(ffn_width, d) for d, w in zip(depths, widths)]
    for d, w in zip(depths, widths):
        rows = d + (w or 1)  # a budget's widths are chosen later, within max_leaf_width
        if rows >= ffn_width:
            raise UserError(f"depth {d} with leaf width {w or 1} touches {rows} rows per token, not fewer than "
                            f"the dense FFN's {ffn_width} neurons: choose a smaller depth or leaf width")
        size, dense = tree_size(d, w or 1, hidden), 2 * ffn_width * hidden
        if size > MAX_SIZE_RATIO * dense:
            raise UserError(f"depth {d} with leaf width {w or 1} makes {size:,} weights per layer, more than "
                            f"{MAX_SIZE_RATIO}x the dense FFN's {dense:,}: choose a smaller depth or leaf width")
        widest = max_leaf_width(d, ffn_width, hidden)
        if w is None and config.neurons_per_token - d > widest:
            raise UserError(f"--neurons-per-token {config.neurons_per_token:g} asks for leaves of "
                            f"{config.neurons_per_token - d:g} neurons on average at depth {d}, more than the "
                            f"{widest} this FFN ({ffn_width} neurons) allows: choose a smaller budget or a larger depth")
    return list(zip(depths, widths))


def tree_size(depth: int, leaf_width: int, hidden: int) -> int:
    """Weights of one FFF layer (the leaves' neuron biases left out): two H-rows per leaf neuron and an
    output bias per leaf, a row and a bias per node."""
    return 2**depth * (2 * leaf_width + 1) * hidden + (2**depth - 1) * (hidden + 1)


def max_leaf_width(depth: int, ffn_width: int, hidden: int) -> int:
    """The widest leaf a tree of `depth` may have: fewer rows per token than the dense FFN has neurons,
    and at most MAX_SIZE_RATIO times its weights (< 1: no leaf fits)."""
    by_rows = ffn_width - depth - 1
    by_size = (MAX_SIZE_RATIO * 2 * ffn_width * hidden - (2**depth - 1) * (hidden + 1)) // (2**depth * hidden)
    return min(by_rows, (by_size - 1) // 2)


def check_calibration(config: FFFConfig, ids) -> int:
    """Tokens that calibration will use; raises if too few for the depth."""
    n = min(count_tokens(ids), config.calib_tokens)
    if n < config.min_tokens():
        raise UserError(
            f"depth {max_depth(config)} needs at least {config.min_tokens()} calibration tokens "
            f"({MIN_TOKENS_PER_LEAF} per leaf plus {config.heldout:.0%} held out); "
            f"there are {n}: give more text (--calib-data, --calib-tokens) or a smaller --depth")
    return n


def check_finite(model):
    """Non-finite source weights would give a non-finite model: stop before any work."""
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise UserError(f"the source model's weight {name} holds NaN or infinite values")


@contextmanager
def exact_numerics(tf32: bool = False, deterministic: bool = True):
    """Same seed, same bits: deterministic algorithms (parallel accumulations such as gather
    backward otherwise reorder float sums), and, unless `tf32`, no TF32 matmuls even where the
    caller enabled them: the leaves' least squares solve normal equations whose ridge is ~1e-3 of
    their diagonal, the size of TF32's rounding, and can turn indefinite under it."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cuda.matmul.allow_tf32)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cuda.matmul.allow_tf32 = before[2]


def split_texts(texts: list, seed: int) -> tuple[list, list]:
    """(held out, the rest), after a seeded shuffle: up to HELDOUT_TEXTS texts (5% at most) for the report."""
    texts = list(texts)
    random.Random(seed).shuffle(texts)
    n = min(HELDOUT_TEXTS, len(texts) // 20)
    return texts[:n], texts[n:]


def _fingerprint(model, config: FFFConfig, texts) -> str:
    h = hashlib.sha256(json.dumps({"config": asdict(config), "model": model.config.to_diff_dict()},
                                  sort_keys=True, default=str).encode())
    for t in texts:
        h.update(repr(t).encode())
    for p in model.parameters():
        h.update(repr(float(p.detach().double().sum())).encode())
    return h.hexdigest()


def convert(model, config: FFFConfig, texts: list, tokenizer, device="cpu", progress=True,
            pooling: Pooling | None = None, checkpoint_dir=None, resume=False):
    """Replace every FFN of `model` by an FFF fitted to it on `texts` (strings, or pairs of strings),
    then distill the whole model against its dense self; returns the model, in eval mode.
    `pooling`: how the model's embedding is pooled, for an embedding model."""
    texts = check_texts(texts)
    act = activation_of(model.config)  # raises for unsupported architectures and activations
    blocks = find_ffns(model)
    ffn_width, hidden = blocks[0].fc1.out_features, blocks[0].fc1.in_features
    shapes = layer_shapes(config, len(blocks), ffn_width, hidden)
    check_finite(model)
    heldout, train = split_texts(texts, config.seed)
    ids = tokenize(tokenizer, train, config.max_length)
    n_tokens = check_calibration(config, ids)
    run = Path(checkpoint_dir) if checkpoint_dir else None
    key = _fingerprint(model, config, texts) if run else None
    if run and resume and (run / "run.json").exists() and json.loads((run / "run.json").read_text())["key"] != key:
        raise UserError(f"the checkpoints in {run} are from a conversion with other settings, text or model; "
                        "run without --resume to start over")
    teacher = copy.deepcopy(model).to(device).eval() if config.e2e.steps else None
    model.to(device)
    torch.manual_seed(config.seed)

    stage = run / "layerwise" if run else None
    if resume and stage and (stage / "state.json").exists():
        meta = load_stage(stage, model, lambda m, s: swap_ffns(m, [FFF(hidden, d, w, act) for d, w in s]))
        stats, times = meta["layers"], meta["seconds"]
    else:
        if run:
            run.mkdir(parents=True, exist_ok=True)
            (run / "run.json").write_text(json.dumps({"key": key}))
        with exact_numerics():
            layers, stats, times = fit_layers(model, blocks, act, shapes, ids, n_tokens, config, device, progress)
        swap_ffns(model, layers)
        if stage:
            save_stage(stage, model, {"shapes": [(s["depth"], s["leaf_width"]) for s in stats],
                                      "layers": stats, "seconds": times})
    model.config.fff = report(config, act, ffn_width, stats, n_tokens, times)
    if key:
        model.config.fff["run"] = key  # which checkpoints this model came from (cli: stale ones are removed)

    if teacher is not None:
        t = time.perf_counter()
        model.config.fff["end_to_end"] = end_to_end(model, teacher, config, ids, heldout, tokenizer, device, pooling,
                                                    run, resume, progress)
        times["end_to_end"] = time.perf_counter() - t
        model.config.fff["seconds"] = {k: round(v, 2) for k, v in times.items()}
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise UserError("conversion gave non-finite weights; try a lower learning rate or another --seed")
    return as_fff_model(model).eval()


def end_to_end(model, teacher, config: FFFConfig, ids, heldout, tokenizer, device, pooling, run, resume, progress):
    """The end-to-end phase, with the held-out comparison before and after it (its report)."""
    pad = tokenizer.pad_token_id or 0
    collate = text_collate(pad, config.e2e.augment, ids)
    check = [{k: v.to(device) for k, v in text_collate(pad)(chunk).items()}
             for chunk in _chunks(tokenize(tokenizer, heldout, config.max_length), 64)]
    model.eval()
    before = compare(model, teacher, check, pooling) if check else {}
    e2e = config.e2e
    if e2e.minutes:  # a time budget: the steps are measured here once, and kept for --resume
        state = json.loads((run / "run.json").read_text()) if run else {}
        steps = (state.get("e2e_steps") if resume else None) or steps_for_minutes(
            model, teacher, ids, collate, e2e, device, pooling, config.seed)
        if run:
            (run / "run.json").write_text(json.dumps({**state, "e2e_steps": steps}))
        e2e = replace(e2e, steps=steps)
    # On a GPU, deterministic kernels would cost end-to-end training much of its speed; a resumed
    # run there equals an uninterrupted one up to the order of float sums.
    with exact_numerics(tf32=True, deterministic=torch.device(device).type == "cpu"):
        stats = distill_model(model, teacher, ids, collate, e2e, device=device, pooling=pooling, seed=config.seed,
                              checkpoint_dir=run / "e2e" if run else None, resume=resume, progress=progress)
    model.eval()
    after = compare(model, teacher, check, pooling) if check else {}
    fvu = [mean(r["hidden_fvu"]) for r in (before, after)] if before else None
    if fvu and fvu[1] > fvu[0]:  # diverged, or far too few steps
        warnings.warn(f"end-to-end distillation left the model further from its source on held-out text (mean "
                      f"hidden-state FVU {fvu[0]:.3f} -> {fvu[1]:.3f}); try a lower --e2e-lr or more --e2e-steps",
                      stacklevel=2)
    return {"steps": e2e.steps, "batch_size": e2e.batch_size, "lr": e2e.lr, "heldout_texts": len(heldout),
            "layerwise_only": before, "after": after, "examples_per_s": stats["examples_per_s"]}


def _chunks(items, size):
    return [items[i: i + size] for i in range(0, len(items), size)]


def fit_layers(model, blocks, act, shapes, ids, n_tokens, config: FFFConfig, device, progress):
    """Calibrate, build every layer's tree by clustering, choose leaf widths (budget), fit the
    leaves, and distill every layer.
    Returns (FFF layers, per-layer report rows, seconds per phase)."""
    times = {}
    t = time.perf_counter()
    inputs = capture_ffn_inputs(model, ids, n_tokens, device=device, progress=progress)
    times["calibration"] = time.perf_counter() - t
    n_fit = int(n_tokens * (1 - config.heldout))
    hidden = blocks[0].fc1.in_features
    dense = [DenseFFN(b.fc1, b.fc2, act, b.norm).to(device) for b in blocks]

    layers, stats, curves, fits = [], [], [], []
    t = time.perf_counter()
    for i, (ffn, X, (D, L)) in enumerate(tqdm(list(zip(dense, inputs, shapes)), desc="clustering", unit="layer",
                                              disable=not progress)):
        X = X.to(device)
        X_fit, X_val = X[:n_fit], X[n_fit:]
        A_fit = ffn.activations(X_fit)
        Y_fit, Y_val = A_fit @ ffn.W2.t() + ffn.b2, ffn.outputs(X_val)
        router = FFF(hidden, D, 1, act).to(device)
        leaf = build_tree(router, X_fit, A_fit, ffn, config.seed + 1000 * i)
        if L is None:  # a budget: measure this layer's error at several leaf widths
            widths = candidate_widths(config.neurons_per_token, D, max_leaf_width(D, ffn.W1.shape[0], hidden))
            curves.append(width_curve(router, X_fit, A_fit, Y_fit, X_val, Y_val, leaf, ffn, config.seed + 1000 * i,
                                      widths))
        fits.append((router, leaf, X_fit, Y_fit, X_val, Y_val))  # A_fit is recomputed: it is the largest
    if curves:
        neurons = int(config.neurons_per_token * len(dense)) - sum(d for d, _ in shapes)
        shapes = [(d, w) for (d, _), w in zip(shapes, allocate(curves, neurons))]
    for i, (ffn, (D, L), (router, leaf, X_fit, Y_fit, X_val, Y_val)) in enumerate(zip(dense, shapes, fits)):
        seed = config.seed + 1000 * i
        A_fit = ffn.activations(X_fit)
        layer = FFF(hidden, D, L, act).to(device)
        with torch.no_grad():
            layer.node_weight.copy_(router.node_weight)
            layer.node_bias.copy_(router.node_bias)
        fit_leaves(layer, X_fit, A_fit, Y_fit, leaf, ffn, seed)
        row = {"layer": i, "depth": D, "leaf_width": L}
        with torch.no_grad():
            if curves:
                row["fvu_by_width"] = {str(w): f for w, f in curves[i].items()}
            if config.baselines:
                baseline = init_from_dense(FFF(hidden, D, L, act).to(device), X_fit, ffn, seed, random=True)
                row["fvu_random"] = ffn.fvu(X_val, baseline.hard_forward(X_val), Y_val)
                row["fvu_oracle"] = ffn.fvu(X_val, oracle_outputs(ffn, X_val, D + L), Y_val)
            row["fvu_init"] = ffn.fvu(X_val, layer.hard_forward(X_val), Y_val)
        layers.append(layer)
        stats.append(row)
        fits[i] = (X_fit, Y_fit, X_val, Y_val)
    times["clustering"] = time.perf_counter() - t

    t = time.perf_counter()
    bar = tqdm(total=len(layers) * config.distill.steps, desc="layer-wise distillation", unit="step",
               disable=not progress or config.distill.steps == 0)
    for i, (layer, ffn, (X_fit, Y_fit, X_val, Y_val)) in enumerate(zip(layers, dense, fits)):
        if config.distill.steps:
            distill_layer(layer, X_fit, Y_fit, ffn, config.distill, config.seed + 1000 * i, bar=bar)
        layer.temperature = config.distill.t_end
        if not all(p.isfinite().all() for p in layer.parameters()):
            raise UserError(f"FFN {i}: fitting gave non-finite weights; try more calibration tokens or another --seed")
        stats[i].update(layer_report(layer, X_val, Y_val, ffn))
        layer.eval()
    bar.close()
    times["layerwise"] = time.perf_counter() - t
    return layers, stats, times


def report(config: FFFConfig, act: str, ffn_width: int, stats: list, n_tokens: int, times: dict) -> dict:
    """The `fff` section of the converted model's config.json."""
    rows = [s["depth"] + s["leaf_width"] for s in stats]
    return {
        "version": __version__, "activation": act, "dense_ffn_width": ffn_width,
        "rows_per_token": sum(rows) / len(rows), "calibration_tokens": n_tokens,
        "settings": asdict(config), "layers": stats, "seconds": {k: round(v, 2) for k, v in times.items()},
    }
