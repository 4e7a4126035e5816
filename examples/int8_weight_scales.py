"""Dynamic int8 with one weight scale per tensor (torch's default) or per output channel (what
quantize.py takes): closeness to the float converted model and speed, side by side.

    python examples/int8_weight_scales.py CONVERTED STSB_DIR SENTENCES.txt

CONVERTED: a converted embedding model (`fffconvert MODEL ...`); STSB_DIR: GLUE's STS-B folder (or
its parent); SENTENCES.txt: text the model was not converted on, one per line. Prints, for each
scheme, the cosine of its sentence embeddings to the float model's (mean, 5th percentile) and its
STS-B Spearman; then the median ms of two 768 x 768 int8 Linear layers at 16 / 128 / 1024
tokens (interleaved rounds: bench.time_calls).
"""
import copy
import sys
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import transformers

import fffconvert
from fffconvert.bench import BenchConfig, time_calls
from fffconvert.evaluate import embed, stsb_pairs, stsb_spearman
from fffconvert.sources import sentence_transformers_parts

warnings.filterwarnings("ignore", category=DeprecationWarning)
SCHEMES = {"per tensor": torch.ao.quantization.default_dynamic_qconfig,
           "per channel": torch.ao.quantization.per_channel_dynamic_qconfig}


def int8(model, scheme):
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear: SCHEMES[scheme]}, dtype=torch.qint8)


def main(folder, stsb, sentences):
    torch.set_num_threads(2)
    model = fffconvert.from_pretrained(folder, quantize=False).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pooling = sentence_transformers_parts(Path(folder))[0]
    pairs = stsb_pairs(stsb)
    texts = [t for t in open(sentences, encoding="utf-8").read().splitlines() if t.strip()]
    ref = embed(model, tokenizer, texts, pooling, "cpu")
    print(f"float32: STS-B {stsb_spearman(model, tokenizer, pairs, pooling, 'cpu'):.2f}")
    for scheme in SCHEMES:
        q = int8(model, scheme)
        cos = torch.nn.functional.cosine_similarity(embed(q, tokenizer, texts, pooling, "cpu"), ref)
        print(f"int8 {scheme}: cosine to float32 {cos.mean():.4f} (5th percentile {cos.quantile(0.05):.4f}), "
              f"STS-B {stsb_spearman(q, tokenizer, pairs, pooling, 'cpu'):.2f}")
    layers = nn.Sequential(nn.Linear(768, 768), nn.Linear(768, 768)).eval()
    quantized = {scheme: int8(layers, scheme) for scheme in SCHEMES}
    with torch.inference_mode():
        for tokens in (16, 128, 1024):
            x = torch.randn(tokens, 768)
            t = time_calls({s: (lambda q=q: q(x)) for s, q in quantized.items()}, BenchConfig(repeats=15))
            print(f"{tokens} tokens, two 768 x 768 int8 Linears, ms: " + ", ".join(
                f"{s} {1e3 * t[s][0]:.3f}" for s in SCHEMES))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
