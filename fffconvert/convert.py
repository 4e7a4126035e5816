"""`convert(model, FFFConfig(...), texts, tokenizer)`: dense transformer -> FFF transformer, in place.

Phases: calibration (capture every FFN's inputs), clustering init (per layer), layer-wise
distillation (per layer), then the module swap. Every check runs before the model is touched, so
a failure never leaves a half-converted model. The per-layer report lands in `model.config.fff`.
"""
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from . import __version__
from .calibrate import capture_ffn_inputs, count_tokens, tokenize
from .distill import DistillConfig, distill_layer, layer_report
from .layer import FFF, default_leaf_width
from .surgery import ConversionError, activation_of, find_ffns, swap_ffns
from .tree_init import DenseFFN, fvu, init_from_dense, oracle_fvu

MIN_TOKENS_PER_LEAF = 4


@dataclass
class FFFConfig:
    depth: int  # tree depth D: 2^D leaves, D routing decisions per token
    leaf_width: int | None = None  # neurons per leaf; None = ceil(F / 2^D)
    calib_tokens: int = 65536  # calibration tokens captured per layer
    heldout: float = 0.1  # share of them kept out of fitting, for the FVU report
    seed: int = 0
    max_length: int = 128  # tokens per calibration text
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self):
        if self.depth < 1:
            raise ConversionError(f"--depth must be >= 1, got {self.depth}")
        if self.leaf_width is not None and self.leaf_width < 1:
            raise ConversionError(f"--leaf-width must be >= 1, got {self.leaf_width}")
        if self.calib_tokens < 1:
            raise ConversionError(f"--calib-tokens must be >= 1, got {self.calib_tokens}")
        if self.distill.steps < 0:
            raise ConversionError(f"--steps must be >= 0, got {self.distill.steps}")

    def min_tokens(self) -> int:
        """Calibration tokens the depth needs: MIN_TOKENS_PER_LEAF per leaf for fitting, plus held-out."""
        return int(MIN_TOKENS_PER_LEAF * 2**self.depth / (1 - self.heldout)) + 1


def check_calibration(config: FFFConfig, ids) -> int:
    """Tokens that calibration will use; raises if too few for the depth."""
    n = min(count_tokens(ids), config.calib_tokens)
    if n < config.min_tokens():
        raise ConversionError(
            f"depth {config.depth} needs at least {config.min_tokens()} calibration tokens "
            f"({MIN_TOKENS_PER_LEAF} per leaf plus {config.heldout:.0%} held out); "
            f"there are {n}: give more text (--calib-data, --calib-tokens) or a smaller --depth")
    return n


@contextmanager
def exact_numerics():
    """Same seed, same bits, full float32: deterministic algorithms (parallel accumulations such as
    gather backward otherwise reorder float sums), and no TF32 matmuls even where the caller enabled
    them for training: the leaves' least squares solve normal equations whose ridge is ~1e-3 of
    their diagonal, the size of TF32's rounding, and can turn indefinite under it."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cuda.matmul.allow_tf32)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cuda.matmul.allow_tf32 = before[2]


def convert(model, config: FFFConfig, texts: list[str], tokenizer, device="cpu", progress=True):
    """Replace every FFN of `model` by an FFF fitted to it on `texts`; returns the model."""
    with exact_numerics():
        return _convert(model, config, texts, tokenizer, device, progress)


def _convert(model, config, texts, tokenizer, device, progress):
    act = activation_of(model.config)  # raises for unsupported architectures and activations
    blocks = find_ffns(model)
    ffn_width = blocks[0].fc1.out_features
    L = config.leaf_width or default_leaf_width(ffn_width, config.depth)
    ids = tokenize(tokenizer, texts, config.max_length)
    n_tokens = check_calibration(config, ids)
    torch.manual_seed(config.seed)
    times = {}

    t = time.perf_counter()
    inputs = capture_ffn_inputs(model, ids, n_tokens, device=device, progress=progress)
    times["calibration"] = time.perf_counter() - t
    n_fit = int(n_tokens * (1 - config.heldout))

    layers, stats, data = [], [], []
    t = time.perf_counter()
    for i, (block, X) in enumerate(tqdm(list(zip(blocks, inputs)), desc="clustering", unit="layer", disable=not progress)):
        dense = DenseFFN(block.fc1, block.fc2, act).to(device)
        X = X.to(device)
        X_fit, X_val = X[:n_fit], X[n_fit:]
        Y_fit, Y_val = dense.outputs(X_fit), dense.outputs(X_val)
        seed = config.seed + 1000 * i
        baseline = init_from_dense(FFF(X.shape[1], config.depth, L, act).to(device), X_fit, dense, seed, random=True)
        layer = init_from_dense(FFF(X.shape[1], config.depth, L, act).to(device), X_fit, dense, seed)
        with torch.no_grad():
            stats.append({"layer": i, "fvu_random": fvu(baseline.hard_forward(X_val), Y_val),
                          "fvu_init": fvu(layer.hard_forward(X_val), Y_val),
                          "fvu_oracle": oracle_fvu(dense, X_val, config.depth + L)})
        layers.append(layer)
        data.append((X_fit, Y_fit, X_val, Y_val))
    times["clustering"] = time.perf_counter() - t

    t = time.perf_counter()
    bar = tqdm(total=len(layers) * config.distill.steps, desc="distillation", unit="step",
               disable=not progress or config.distill.steps == 0)
    for i, (layer, (X_fit, Y_fit, X_val, Y_val)) in enumerate(zip(layers, data)):
        if config.distill.steps:
            distill_layer(layer, X_fit, Y_fit, config.distill, config.seed + 1000 * i, bar=bar)
        layer.temperature = config.distill.t_end
        if not all(p.isfinite().all() for p in layer.parameters()):
            raise ConversionError(f"FFN {i}: fitting gave non-finite weights; try more calibration tokens or another --seed")
        stats[i].update(layer_report(layer, X_val, Y_val))
        layer.eval()
    bar.close()
    times["distillation"] = time.perf_counter() - t

    swap_ffns(model, layers)
    n_nodes, n_leaves = 2**config.depth - 1, 2**config.depth
    model.config.fff = {
        "version": __version__, "depth": config.depth, "leaf_width": L, "activation": act,
        "dense_ffn_width": ffn_width, "rows_per_token": config.depth + L,
        "rows_total": n_nodes + n_leaves * L, "calibration_tokens": n_tokens,
        "settings": {**asdict(config), "distill": asdict(config.distill)},
        "layers": stats, "seconds": {k: round(v, 2) for k, v in times.items()},
    }
    return model
