"""GLUE rows (texts..., label) to padded model inputs, each row's texts tokenized once.

On an H200, building a batch (tokenizing it anew, indices, the copy to the GPU) took 9 of a
finetuning step's 31 ms at batch 32 and 28 of 58 ms at batch 128, while four times the examples
took forward and backward only from 17 to 26 ms: the step is bound by the host
(recipes/profile_finetune_step.py). So each distinct row is tokenized once, in large batched
calls, and kept as int32 arrays; a batch is then only padded. The tensors are the ones
`tokenizer(*texts, padding=True, truncation=True, max_length=...)` returns for the batch.
"""
import numpy as np
import torch

CHUNK = 4096  # rows per batched tokenizer call


def texts_of(row) -> tuple:
    return tuple(row[:-1])


class Collate:
    """collate(rows) -> the batch's padded inputs and labels; rows may be tuples or lists."""

    def __init__(self, tokenizer, regression: bool, max_length: int):
        self.tokenizer, self.regression, self.max_length = tokenizer, regression, max_length
        self.pad = {"input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
        self.left = tokenizer.padding_side == "left"
        self.cache: dict[tuple, dict[str, np.ndarray]] = {}

    def encode(self, rows):
        """Tokenize the rows whose texts are not cached yet (call it on a whole split up front)."""
        new = list(dict.fromkeys(t for t in map(texts_of, rows) if t not in self.cache))
        for i in range(0, len(new), CHUNK):
            chunk = new[i: i + CHUNK]
            enc = self.tokenizer(*[list(col) for col in zip(*chunk)], truncation=True, max_length=self.max_length)
            keys = [k for k in enc.keys() if k != "attention_mask"]  # the mask follows from the lengths
            for j, texts in enumerate(chunk):
                self.cache[texts] = {k: np.asarray(enc[k][j], dtype=np.int32) for k in keys}

    def __call__(self, rows):
        self.encode(rows)
        feats = [self.cache[texts_of(r)] for r in rows]
        lengths = [len(f["input_ids"]) for f in feats]
        width = max(lengths)
        batch = {}
        for key in feats[0]:
            out = np.full((len(feats), width), self.pad.get(key, 0), dtype=np.int64)
            for i, f in enumerate(feats):
                if self.left:
                    out[i, width - lengths[i]:] = f[key]
                else:
                    out[i, : lengths[i]] = f[key]
            batch[key] = torch.from_numpy(out)
        pos = np.arange(width)[None, :]
        n = np.asarray(lengths)[:, None]
        mask = pos >= width - n if self.left else pos < n
        batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
        batch["labels"] = torch.tensor([r[-1] for r in rows], dtype=torch.float32 if self.regression else torch.long)
        return batch
