"""A grammatical-acceptability task in CoLA's layout, made from real sentences, for checking the
GLUE recipe on a task of CoLA's kind and metric (single sentence, Matthews correlation, 70%
acceptable) that none of its rules were chosen on. CoLA itself is not in ../shared/glue.

Sentences: STS-B's (train -> train.tsv, dev -> dev.tsv; news, captions and forum posts, which the
general model's conversion text does not hold). 30% of them are made unacceptable by one edit of
word order or count: two neighbouring words swapped, a word dropped, a word repeated, or a word
moved. Some such edits leave a sentence acceptable: label noise, as CoLA has its own.

    python examples/make_acceptability_task.py ../shared/glue OUT   # writes OUT/CoLA/{train,dev}.tsv
"""
import random
import sys
from pathlib import Path

from make_real_text import rows

UNACCEPTABLE_SHARE, TRAIN_SIZE, DEV_SIZE = 0.3, 8551, 1043  # CoLA's share and sizes


def corrupt(words: list[str], rng: random.Random) -> list[str]:
    w, i = list(words), rng.randrange(len(words) - 1)
    edit = rng.choice(("swap", "drop", "repeat", "move"))
    if edit == "swap":
        w[i], w[i + 1] = w[i + 1], w[i]
    elif edit == "drop":
        del w[i]
    elif edit == "repeat":
        w.insert(i + 1, w[i])
    else:
        moved = w.pop(i)
        w.insert(rng.choice([j for j in range(len(w) + 1) if abs(j - i) >= 2]), moved)
    return w


def task_rows(sentences: list[str], n: int, rng: random.Random) -> list[tuple[int, str]]:
    sentences = [s for s in dict.fromkeys(s.strip() for s in sentences) if 4 <= len(s.split()) <= 30]
    rng.shuffle(sentences)
    out = []
    for s in sentences[:n]:
        words = s.split()
        bad = corrupt(words, rng) if rng.random() < UNACCEPTABLE_SHARE else None
        out.append((1, s) if bad is None or bad == words else (0, " ".join(bad)))
    return out


def main(glue, out):
    rng = random.Random(0)
    folder = Path(out) / "CoLA"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", TRAIN_SIZE), ("dev", DEV_SIZE)):
        pairs = rows(Path(glue) / "STS-B" / f"{split}.tsv")
        made = task_rows([s for r in pairs for s in (r["sentence1"], r["sentence2"])], n, rng)
        lines = [f"stsb\t{label}\t{'' if label else '*'}\t{s}" for label, s in made]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        print(f"{split}: {len(made)} sentences, {sum(1 - lb for lb, _ in made)} unacceptable -> {folder / split}.tsv")


if __name__ == "__main__":
    main(*sys.argv[1:3])
