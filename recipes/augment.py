"""Extra inputs for distillation. The teacher labels whatever it is shown, so any plausible input
teaches the student something.

Small GLUE tasks (MRPC 3.7k pairs, STS-B 5.7k) are seen dozens of times in a distillation run, and
the student learns to match the teacher on those examples rather than on the task's inputs at
large. An augmented copy of an example has, for pair tasks with probability `swap`, its second
text replaced by another example's (a pair the teacher calls unrelated, the low end of STS-B's
scale), and each word deleted with probability `p` or replaced, with probability `p`, by a word
drawn from the task's training text (in the spirit of TinyBERT's augmentation, without its
word-embedding neighbours).
"""
import random


def perturb(text: str, vocab: list[str], rng: random.Random, p: float) -> str:
    words = []
    for w in text.split():
        u = rng.random()
        if u < p:
            continue
        words.append(rng.choice(vocab) if u < 2 * p else w)
    return " ".join(words) or text


def augment(rows: list[tuple], copies: int, seed: int = 0, p: float = 0.1, swap: float = 0.25) -> list[tuple]:
    """`copies` perturbed copies of every row of (text, [text2,] label). Labels are kept as they
    are but mean nothing: distillation trains on the teacher's outputs only."""
    rng = random.Random(seed)
    vocab = [w for row in rows for text in row[:-1] for w in text.split()]
    out = []
    for _ in range(copies):
        for row in rows:
            texts = list(row[:-1])
            if len(texts) == 2 and rng.random() < swap:
                texts[1] = rng.choice(rows)[1]
            out.append((*(perturb(t, vocab, rng, p) for t in texts), row[-1]))
    return out
