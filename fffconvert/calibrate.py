"""Calibration: capture what every dense FFN sees on the conversion text.

One forward pass of the dense model records the input of each FFN at every real (non-padding)
token, up to `max_tokens` tokens. That is all that is kept: activations and outputs are recomputed
from these inputs, one layer at a time, so memory stays at layers x tokens x hidden floats.
"""
import torch
from tqdm.auto import tqdm

from .errors import UserError
from .surgery import find_ffns


def check_texts(texts, what: str = "texts") -> list:
    """`texts` as a list, refused unless it is a non-empty sequence of strings or of (str, str)
    pairs. A bare string would otherwise be taken as texts of one character each."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise UserError(f"{what} must be a list of strings (or of string pairs), got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise UserError(f"{what} is empty")
    for i, t in enumerate(texts):
        pair = isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(x, str) for x in t)
        if not (isinstance(t, str) or pair):
            raise UserError(f"{what}[{i}] is a {type(t).__name__}, not a string or a pair of strings")
    return texts


def tokenize(tokenizer, texts, max_length: int = 128):
    """Token ids per text (truncated, also to the tokenizer's model_max_length), without padding.
    A text may be a pair (a, b) of strings."""
    max_length = min(max_length, tokenizer.model_max_length)
    if texts and isinstance(texts[0], (tuple, list)):
        a, b = zip(*texts)
        return tokenizer(list(a), list(b), truncation=True, max_length=max_length)["input_ids"]
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def count_tokens(ids) -> int:
    return sum(len(x) for x in ids)


@torch.no_grad()
def capture_ffn_inputs(model, ids, max_tokens: int, batch_size: int = 32, device="cpu", progress=True):
    """Inputs of every FFN at up to `max_tokens` real tokens: a list (one per layer) of [N, H]."""
    blocks = find_ffns(model)
    stores = [[] for _ in blocks]
    state = {"mask": None}

    def hook(i):
        def fn(_module, args):
            stores[i].append(args[0][state["mask"]].float().cpu())
        return fn

    handles = [b.fc1.register_forward_pre_hook(hook(i)) for i, b in enumerate(blocks)]
    model.eval().to(device)
    pad = 0
    seen = 0
    try:
        bar = tqdm(total=max_tokens, desc="calibration", unit="tok", disable=not progress)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start: start + batch_size]
            width = max(len(x) for x in chunk)
            input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in chunk], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in chunk], device=device)
            state["mask"] = mask.bool()
            model(input_ids=input_ids, attention_mask=mask)
            n = int(mask.sum())
            bar.update(min(n, max_tokens - seen))
            seen += n
            if seen >= max_tokens:
                break
        bar.close()
    finally:
        for h in handles:
            h.remove()
    return [torch.cat(s)[:max_tokens] for s in stores]
