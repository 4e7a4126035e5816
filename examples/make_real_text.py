"""Write the conversion text used for the fidelity measurements: the SST-2 and MRPC training
sentences of four words or more, deduplicated and shuffled (seed 0). STS-B stays out of it: its
sentences are what the converted model is measured on.

With a third argument, also a folder of held-out text by kind for `fffconvert eval --data
FOLDER`, which measures each file on its own: SST-2 and MRPC dev (the conversion text's kinds, new
sentences) and STS-B dev's sentences by genre (other kinds); none of it is in real.txt (MRPC
repeats a few sentences across its splits: those are left out).

With a fourth, also STS-B dev's 3000 sentences, one per line: every pair's first sentence, then
every pair's second (`fffconvert eval --data` reads its first 2000 by default: the file the
"STS-B sentences" figures of docs/results were measured on).

    python examples/make_real_text.py ../shared/glue real.txt [heldout/ [stsb_sents.txt]]
"""
import csv
import random
import sys
from pathlib import Path


def rows(path):
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def main(glue, out):
    glue = Path(glue)
    sst = [r["sentence"] for r in rows(glue / "SST-2" / "train.tsv")]
    mrpc = [s for r in rows(glue / "MRPC" / "train.tsv") for s in (r["#1 String"], r["#2 String"])]
    texts = [t.strip() for t in sst + mrpc if len(t.split()) >= 4]
    random.Random(0).shuffle(texts)
    texts = list(dict.fromkeys(texts))
    Path(out).write_text("\n".join(texts) + "\n")
    print(f"{len(texts)} texts -> {out}")
    return texts


def held_out(glue, folder, seen):
    glue, folder = Path(glue), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {"sst2-dev": [r["sentence"] for r in rows(glue / "SST-2" / "dev.tsv")],
             "mrpc-dev": [s for r in rows(glue / "MRPC" / "dev.tsv") for s in (r["#1 String"], r["#2 String"])]}
    for r in rows(glue / "STS-B" / "dev.tsv"):
        kinds.setdefault(f"stsb-dev-{r['genre'].removeprefix('main-')}", []).extend((r["sentence1"], r["sentence2"]))
    for name, texts in kinds.items():
        texts = [t for t in dict.fromkeys(t.strip() for t in texts) if t and t not in seen]
        (folder / f"{name}.txt").write_text("\n".join(texts) + "\n")
        print(f"{len(texts)} texts -> {folder / name}.txt")


def stsb_sentences(glue, out):
    pairs = rows(Path(glue) / "STS-B" / "dev.tsv")
    texts = [r["sentence1"] for r in pairs] + [r["sentence2"] for r in pairs]
    Path(out).write_text("\n".join(texts) + "\n")
    print(f"{len(texts)} texts -> {out}")


if __name__ == "__main__":
    conversion_text = main(*sys.argv[1:3])
    if len(sys.argv) > 3:
        held_out(sys.argv[1], sys.argv[3], set(conversion_text))
    if len(sys.argv) > 4:
        stsb_sentences(sys.argv[1], sys.argv[4])
