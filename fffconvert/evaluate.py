"""`fffconvert eval`: how close a converted model is to its dense source, on text it was not
converted on, and how fast both run here.

Reported: every layer's hidden-state FVU and the cosine of the final token states; for an
embedding model (sentence-transformers pooling), the mean and 5th-percentile cosine of the text
embeddings and their top-10 nearest-neighbour agreement; with STS-B, the Spearman correlation of
both models' embedding cosines with the human scores; the forward time of both models. Text from
several files (a folder) is also measured file by file: a model converted on one kind of text can
stay close on it and drift on another, and this is where a user sees it.
"""
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from .atomic import check_writable, write_text
from .calibrate import check_texts, tokenize
from .e2e import text_collate
from .errors import UserError
from .measures import Pooling, gap_sums, merge, summarize
from .surgery import check_source
from .texts import read_text_sources

EVAL_CORPUS = Path(__file__).parent / "data" / "eval.txt"


def stsb_pairs(path) -> tuple[list[str], list[str], list[float]]:
    """STS-B dev: a folder holding dev.tsv (or STS-B/dev.tsv), or the file itself."""
    path = Path(path)
    file = next((p for p in (path, path / "dev.tsv", path / "STS-B" / "dev.tsv") if p.is_file()), None)
    if file is None:
        raise UserError(f"--stsb {path}: no STS-B dev.tsv there (GLUE layout: STS-B/dev.tsv)")
    csv.field_size_limit(sys.maxsize)
    try:
        with open(file, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        a, b, y = zip(*((r["sentence1"], r["sentence2"], float(r["score"])) for r in rows))
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{file} is not STS-B's dev.tsv (columns sentence1, sentence2, score): {e}")
    return list(a), list(b), list(y)


@torch.no_grad()
def embed(model, tokenizer, texts, pooling: Pooling, device, max_length=128, batch_size=128):
    collate = text_collate(tokenizer.pad_token_id or 0)
    out = []
    for i in range(0, len(texts), batch_size):
        batch = {k: v.to(device) for k, v in collate(tokenize(tokenizer, texts[i: i + batch_size], max_length)).items()}
        out.append(pooling(model(**batch).last_hidden_state, batch["attention_mask"]).float().cpu())
    return torch.cat(out)


def stsb_spearman(model, tokenizer, pairs, pooling: Pooling, device) -> float:
    from scipy.stats import spearmanr

    a, b, y = pairs
    ea, eb = embed(model, tokenizer, a, pooling, device), embed(model, tokenizer, b, pooling, device)
    return 100 * float(spearmanr(torch.nn.functional.cosine_similarity(ea, eb).numpy(), y)[0])


def forward_ms(dense, fff, batch, rounds: int = 5) -> dict:
    """Median ms of one forward of each model on `batch`, in interleaved rounds (one process)."""
    times = {"dense": [], "fff": []}
    sync = torch.cuda.synchronize if batch["input_ids"].is_cuda else (lambda: None)
    with torch.inference_mode():
        for m in (dense, fff):
            m(**batch)
        for _ in range(rounds):
            for name, m in (("dense", dense), ("fff", fff)):
                sync()
                t = time.perf_counter()
                m(**batch)
                sync()
                times[name].append((time.perf_counter() - t) * 1e3)
    out = {k: statistics.median(v) for k, v in times.items()}
    out["speedup"] = out["dense"] / out["fff"]
    out["batch"] = list(batch["input_ids"].shape)
    return out


def _batches(tokenizer, texts, device, max_length):
    collate = text_collate(tokenizer.pad_token_id or 0)
    ids = tokenize(tokenizer, texts, max_length)
    return [{k: v.to(device) for k, v in collate(ids[i: i + 64]).items()} for i in range(0, len(ids), 64)]


def evaluate(fff, dense, tokenizer, texts: list[str] | dict[str, list[str]], pooling: Pooling | None = None,
             stsb=None, device="cpu", max_length: int = 128) -> dict:
    """The report above, as a dict (see `to_markdown`). `texts`: a list, or texts by source
    (eval_texts), measured together and, when there are several sources, each on its own."""
    check_source(fff, dense)
    sources = texts if isinstance(texts, dict) else {"texts": texts}
    sources = {name: check_texts(ts, f"texts of {name}") for name, ts in sources.items()}
    fff, dense = fff.to(device).eval(), dense.to(device).eval()
    batches = {name: _batches(tokenizer, ts, device, max_length) for name, ts in sources.items()}
    sums = {name: gap_sums(fff, dense, b, pooling) for name, b in batches.items()}
    result = {"texts": sum(len(ts) for ts in sources.values()), **summarize(merge(list(sums.values())))}
    if len(sources) > 1:
        result["by_source"] = {name: {"texts": len(sources[name]), **summarize(part)} for name, part in sums.items()}
    if stsb is not None and pooling is not None:
        result["stsb_spearman"] = {"dense": stsb_spearman(dense, tokenizer, stsb, pooling, device),
                                   "fff": stsb_spearman(fff, tokenizer, stsb, pooling, device)}
        result["stsb_spearman"]["retention"] = result["stsb_spearman"]["fff"] / result["stsb_spearman"]["dense"]
    longest = max((b for part in batches.values() for b in part), key=lambda b: b["input_ids"].numel())
    result["speed_ms"] = forward_ms(dense, fff, longest)
    result["device"] = str(device)
    result["threads"] = torch.get_num_threads()
    return result


def _by_source_markdown(by_source: dict) -> str:
    embedding = all("embedding_cosine" in r for r in by_source.values())
    head = "| text | texts | last-layer FVU | token cosine |" + (" embedding cosine, mean / 5th pct |" if embedding else "")
    lines = [head, "|---|---:|---:|---:|" + ("---:|" if embedding else "")]
    for name, r in by_source.items():
        row = f"| {name} | {r['texts']} | {r['hidden_fvu'][-1]:.4f} | {r['token_cosine']:.4f} |"
        lines.append(row + (f" {r['embedding_cosine']:.4f} / {r['embedding_cosine_p5']:.4f} |" if embedding else ""))
    return "By source:\n\n" + "\n".join(lines)


def to_markdown(r: dict) -> str:
    lines = ["| measure | value |", "|---|---:|"]
    lines += [f"| hidden-state FVU, layer {i + 1} | {v:.4f} |" for i, v in enumerate(r["hidden_fvu"])]
    lines.append(f"| cosine of final token states, mean | {r['token_cosine']:.4f} |")
    if "embedding_cosine" in r:
        agree = r["neighbour_agreement"]
        lines += [f"| embedding cosine, mean | {r['embedding_cosine']:.4f} |",
                  f"| embedding cosine, 5th percentile | {r['embedding_cosine_p5']:.4f} |",
                  f"| top-10 neighbour agreement | {'n/a (11 texts or fewer)' if agree is None else f'{agree:.3f}'} |"]
    if "stsb_spearman" in r:
        s = r["stsb_spearman"]
        lines.append(f"| STS-B Spearman, dense / FFF (retention) | {s['dense']:.2f} / {s['fff']:.2f} "
                     f"({100 * s['retention']:.1f}%) |")
    sp = r["speed_ms"]
    lines.append(f"| forward ms, dense / FFF, batch {sp['batch'][0]} x {sp['batch'][1]}, {r['device']}, "
                 f"{r['threads']} threads | {sp['dense']:.1f} / {sp['fff']:.1f} ({sp['speedup']:.2f}x) |")
    text = f"On {r['texts']} texts ({r['tokens']} tokens) not used for conversion:\n\n" + "\n".join(lines)
    if "by_source" in r:
        text += "\n\n" + _by_source_markdown(r["by_source"])
    if "int8" in r:
        text += (f"\n\nWith the remaining Linear layers in int8 ({r['int8']['backend']} backend):\n\n"
                 + to_markdown(r["int8"]).split("\n\n", 1)[1])
    return text


def eval_texts(data, column=None, max_texts: int = 2000) -> dict[str, list[str]]:
    """Texts by source file, at most `max_texts` from each."""
    return {name: texts[:max_texts] for name, texts in read_text_sources(data if data else EVAL_CORPUS, column).items()}


def write_json(result: dict, path):
    path = Path(path)
    check_writable(path.parent / ".probe")
    write_text(path, json.dumps(result, indent=2, sort_keys=True))
