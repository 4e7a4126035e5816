"""Where FFF + int8 spends its time on the CPU: the BERT-base-shaped FFF model (depth 11, leaf
width 2, random weights) with its other Linear layers in int8 (`fffconvert.quantize`), timed per
part of an encoder layer with forward hooks, at the shapes of `fffconvert bench --peers`.

    python examples/profile_cpu_int8.py [--threads 2]

Prints ms per forward, summed over the 12 layers: the self-attention block (the query, key and
value int8 Linears and the attention itself), the attention output (int8 Linear + LayerNorm), the
FFF layer, the FFN's LayerNorm, and the whole model; and alone, for one layer's shapes, the three
int8 Linears and the attention op.
"""
import collections
import copy
import time
import warnings

import click
import torch

from fffconvert.bench import BenchConfig, bert_models, random_ids
from fffconvert.quantize import quantize

PARTS = {"attention.self": "query, key, value + attention", "attention.output": "attention output + LayerNorm",
         "intermediate": "FFF layer", "output": "FFN LayerNorm"}


def mean_ms(fn, n=10, warmup=2):
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e3


@click.command()
@click.option("--threads", type=int, default=2, show_default=True)
def main(threads):
    torch.set_num_threads(threads)
    _, fff, _ = bert_models(BenchConfig(depth=11, leaf_width=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantize(copy.deepcopy(fff), "int8")
    spent, started = collections.defaultdict(float), {}
    for layer in model.encoder.layer:
        for name in PARTS:
            part = layer.get_submodule(name)
            part.register_forward_pre_hook(lambda m, a, name=name: started.__setitem__(name, time.perf_counter()))
            part.register_forward_hook(lambda m, a, o, name=name: spent.__setitem__(
                name, spent[name] + time.perf_counter() - started[name]))
    attn = model.encoder.layer[0].attention.self
    for batch, tokens in ((1, 16), (1, 128), (8, 128)):
        ids = random_ids(model.config.vocab_size, batch, tokens, "cpu")
        x = torch.randn(batch, tokens, model.config.hidden_size)
        heads = torch.randn(batch, model.config.num_attention_heads, tokens, 64)
        with torch.inference_mode():
            mean_ms(lambda: model(input_ids=ids), n=2)
            spent.clear()
            total = mean_ms(lambda: model(input_ids=ids), warmup=0)
            parts = {PARTS[k]: v * 1e3 / 10 for k, v in spent.items()}
            qkv = mean_ms(lambda: (attn.query(x), attn.key(x), attn.value(x)), 20)
            sdpa = mean_ms(lambda: torch.nn.functional.scaled_dot_product_attention(heads, heads, heads), 20)
        click.echo(f"{batch} x {tokens}: whole model {total:.2f} ms; " + "; ".join(f"{k} {v:.2f}" for k, v in parts.items())
                   + f"; one layer alone: q/k/v int8 Linears {qkv:.3f}, attention op {sdpa:.3f}")


if __name__ == "__main__":
    main()
