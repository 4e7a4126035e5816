"""Use a converted sentence-transformers model as its users do, beside the dense original.

    python examples/use_converted.py out/minilm-fff [DENSE_MODEL]

After `import fffconvert`, sentence-transformers (and transformers' Auto classes and pipelines)
load the converted folder as the FFF model; nothing else changes for the user.
"""
import sys
import time

import fffconvert  # noqa: F401  (registers the converted model types; first, as it filters torchao's import chatter)
import torch
from sentence_transformers import SentenceTransformer

from fffconvert.sources import embedded_model_path

SENTENCES = [
    "The new phone has a bright screen and a battery that lasts two days.",
    "Officials postponed the vote after the storm closed the roads.",
    "I did not expect the sequel to be this funny.",
    "The recipe needs fresh basil, garlic and a little lemon.",
    "Heavy rain forced the city to delay the election.",
    "This comedy made me laugh more than the first film.",
]


def timed(model, n=5):
    model.encode(SENTENCES)
    t = time.perf_counter()
    for _ in range(n):
        model.encode(SENTENCES)
    return (time.perf_counter() - t) / n * 1e3


def main(path, dense_name=None):
    fff = SentenceTransformer(path, device="cpu")
    dense = SentenceTransformer(str(dense_name or embedded_model_path()), device="cpu")
    a, b = dense.encode(SENTENCES, convert_to_tensor=True), fff.encode(SENTENCES, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(a, b)
    nearest = lambda e: (dense.similarity(e, e) - 2 * torch.eye(len(e))).argmax(1)  # noqa: E731
    info = fff[0].auto_model.config.fff
    print(f"\n{path}: {type(fff[0].auto_model).__name__}, {info['rows_per_token']:.1f} of {info['dense_ffn_width']} "
          "FFN neurons per token")
    print("cosine(dense, FFF) of the sentence embeddings: " + ", ".join(f"{c:.3f}" for c in cos.tolist()))
    print(f"nearest other sentence the same in both models for {int((nearest(a) == nearest(b)).sum())}/{len(SENTENCES)}")
    print(f"encode() of these {len(SENTENCES)} sentences, {torch.get_num_threads()} threads: dense {timed(dense):.1f} ms, "
          f"FFF {timed(fff):.1f} ms (mean of 5; `fffconvert bench` measures properly)")


if __name__ == "__main__":
    main(*sys.argv[1:])
