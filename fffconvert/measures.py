"""How close a model's outputs are to another's: the quantities that end-to-end distillation
minimizes and that `fffconvert eval` reports, in one place so that both measure the same thing.

All of them count real tokens only (`mask`: the attention mask), never padding.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")


@dataclass(frozen=True)
class Pooling:
    """How an embedding model turns token states into one vector (sentence-transformers' Pooling
    and Normalize modules)."""
    mode: str = "mean"
    normalize: bool = True

    def __post_init__(self):
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode {self.mode!r} is not one of {POOLING_MODES}")

    def __call__(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, H], mask [B, T] -> [B, H]."""
        m = mask.unsqueeze(-1).to(hidden.dtype)
        if self.mode == "cls":
            out = hidden[:, 0]
        elif self.mode == "max":
            out = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
        else:
            total, n = (hidden * m).sum(1), m.sum(1).clamp_min(1)
            out = total / (n if self.mode == "mean" else n.sqrt())
        return F.normalize(out, dim=-1) if self.normalize else out


def hidden_fvu(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, reduce=None) -> torch.Tensor:
    """Fraction of the teacher's token-state variance the student leaves unexplained, over real
    tokens: ||s - t||^2 / ||t - mean(t)||^2 (a 0-d tensor, differentiable).

    `reduce` sums a tensor over the processes of a distributed run (all_reduce); with it, the
    variance is the whole global batch's and this process's share of the error is scaled so that
    the mean of the processes' gradients (what DDP applies) is the gradient of the global FVU."""
    m = mask.bool()
    s, t = student[m], teacher[m]
    err = (s - t).pow(2).sum()
    if reduce is None:
        return err / (t - t.mean(0)).pow(2).sum().clamp_min(1e-12)
    stats = reduce(torch.cat([t.sum(0), t.pow(2).sum().view(1), t.new_tensor([len(t)])]).detach())
    n = stats[-1].clamp_min(1)
    var = stats[-2] - stats[:-2].pow(2).sum() / n
    world = torch.distributed.get_world_size()
    return world * err / var.clamp_min(1e-12)


def token_cosine(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cosine of each real token's state in the two models: [number of real tokens]."""
    m = mask.bool()
    return F.cosine_similarity(student[m], teacher[m], dim=-1)


def embedding_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cosine of each text's embedding in the two models: [B]."""
    return F.cosine_similarity(student, teacher, dim=-1)


def neighbour_agreement(student: torch.Tensor, teacher: torch.Tensor, k: int = 10) -> float | None:
    """Mean share of each text's k nearest other texts (by cosine) that both models agree on; None for
    k + 1 texts or fewer, where every other text is a neighbour and agreement would be 1 whatever the models."""
    if len(student) <= k + 1:
        return None
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    eye = torch.eye(len(s), dtype=torch.bool, device=s.device)
    top = lambda e: (e @ e.t()).masked_fill(eye, -2).topk(k, dim=1).indices  # noqa: E731
    a, b = top(s), top(t)
    hits = (a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().sum(1)
    return (hits / k).mean().item()


@torch.no_grad()
def compare(model, reference, batches, pooling: Pooling | None = None) -> dict:
    """How close `model` is to `reference` on `batches` (dicts of input tensors on their device):
    every layer's hidden-state FVU, the mean cosine of the final token states, and with `pooling`
    the mean and 5th-percentile cosine of the embeddings and their top-10 neighbour agreement."""
    return summarize(gap_sums(model, reference, batches, pooling))


@torch.no_grad()
def gap_sums(model, reference, batches, pooling: Pooling | None = None) -> dict:
    """What `summarize` turns into compare's measures, as sums over the texts: those of several
    sets of texts add up (`merge`), so a whole and its parts come from one pass over each part."""
    err, sq, s1, n, cos, emb = None, None, None, 0, [], ([], [])
    for batch in batches:
        batch = {k: v for k, v in batch.items() if k != "labels"}
        mask = batch["attention_mask"].bool()
        hs = model(**batch, output_hidden_states=True).hidden_states[1:]
        ht = reference(**batch, output_hidden_states=True).hidden_states[1:]
        if err is None:
            err, sq, s1 = [0.0] * len(ht), [0.0] * len(ht), [0.0] * len(ht)
        for i, (s, t) in enumerate(zip(hs, ht)):
            s, t = s[mask].double(), t[mask].double()
            err[i] += (s - t).pow(2).sum().item()
            sq[i] += t.pow(2).sum().item()
            s1[i] = s1[i] + t.sum(0)
        n += int(mask.sum())
        cos.append(token_cosine(hs[-1], ht[-1], mask).cpu())
        if pooling is not None:
            emb[0].append(pooling(hs[-1], mask).float().cpu())
            emb[1].append(pooling(ht[-1], mask).float().cpu())
    return {"err": err, "sq": sq, "sum": s1, "tokens": n, "token_cosines": torch.cat(cos),
            "embeddings": (torch.cat(emb[0]), torch.cat(emb[1])) if pooling is not None else None}


def merge(parts: list[dict]) -> dict:
    """The gap_sums of the union of the parts' texts."""
    add = lambda key: [sum(values) for values in zip(*(p[key] for p in parts))]  # noqa: E731
    embeddings = None if parts[0]["embeddings"] is None else tuple(
        torch.cat([p["embeddings"][k] for p in parts]) for k in (0, 1))
    return {"err": add("err"), "sq": add("sq"), "sum": add("sum"), "tokens": sum(p["tokens"] for p in parts),
            "token_cosines": torch.cat([p["token_cosines"] for p in parts]), "embeddings": embeddings}


def summarize(sums: dict) -> dict:
    n = sums["tokens"]
    var = [tot - (m.pow(2).sum().item() / n) for tot, m in zip(sums["sq"], sums["sum"])]  # sum of ||t - mean||^2
    out = {"hidden_fvu": [e / max(v, 1e-12) for e, v in zip(sums["err"], var)],
           "token_cosine": sums["token_cosines"].mean().item(), "tokens": n}
    if sums["embeddings"] is not None:
        s, t = sums["embeddings"]
        c = embedding_cosine(s, t)
        out.update({"embedding_cosine": c.mean().item(), "embedding_cosine_p5": c.quantile(0.05).item(),
                    "neighbour_agreement": neighbour_agreement(s, t, 10), "texts": len(s)})
    return out
