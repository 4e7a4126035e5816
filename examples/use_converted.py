"""Load a converted model as a normal transformers model and compare it with the dense original.

    python examples/use_converted.py out/minilm-fff-d8 [DENSE_MODEL]
"""
import sys
import time

import torch
import transformers

import fffconvert

SENTENCES = [
    "The new phone has a bright screen and a battery that lasts two days.",
    "Officials postponed the vote after the storm closed the roads.",
    "I did not expect the sequel to be this funny.",
    "The recipe needs fresh basil, garlic and a little lemon.",
]


def main(path, dense_name=None):
    fff = fffconvert.from_pretrained(path)  # a BertModel whose FFNs are FFF trees, hard forward
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    if dense_name is None:
        from fffconvert.sources import embedded_model_path

        dense_name = embedded_model_path()
    dense = transformers.AutoModel.from_pretrained(dense_name).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        def embed(model):
            h = model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1)
            return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

        a, b = embed(dense), embed(fff)
        cos = (a * b).sum(-1)
        same = (a @ a.t()).argsort(1)[:, -2] == (b @ b.t()).argsort(1)[:, -2]
        t = time.perf_counter()
        for _ in range(5):
            embed(dense)
        t_dense = (time.perf_counter() - t) / 5
        t = time.perf_counter()
        for _ in range(5):
            embed(fff)
        t_fff = (time.perf_counter() - t) / 5
    info = fff.config.fff
    print(f"\nFFF model from {path}: depth {info['depth']}, {info['rows_per_token']} of {info['rows_total']} FFN rows per token")
    print("cosine(dense, FFF) of mean-pooled sentence embeddings: " + ", ".join(f"{c:.3f}" for c in cos.tolist()))
    print(f"nearest other sentence unchanged for {int(same.sum())}/{len(SENTENCES)} sentences")
    print(f"forward of this batch ({batch['input_ids'].numel()} tokens, {torch.get_num_threads()} threads): "
          f"dense {t_dense * 1e3:.1f} ms, FFF {t_fff * 1e3:.1f} ms (mean of 5; `fffconvert bench` measures properly)")


if __name__ == "__main__":
    main(*sys.argv[1:])
