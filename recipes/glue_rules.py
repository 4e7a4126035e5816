"""The GLUE recipe's defaults, as rules of the task's own training data. No default was chosen on a
dev set: every choice below is made on `heldout`, a split of train, or follows from its size.

- Held-out split: 10% of train, at least 200 and at most 2000 examples, stratified by label for
  classification, drawn with the seed. The rest of train is what the models learn from.
- Dense finetuning (when MODEL is not yet a classifier): AdamW, warm-up over 10% of the steps.
  Epochs: 10 below 10k examples, 5 below 100k, else 3. Below 20k examples, batch 32 and the
  learning rates 2e-5, 5e-5 and 1e-4 (small tasks need many updates and swing most with the rate);
  from 20k, batch 128 at 1e-4 (twice 5e-5 for four times the batch: square-root scaling). A
  step of 128 costs a GPU little more than one of 32 (the step is bound by the host), so large
  tasks finish 3-4x sooner: MNLI's 3 epochs are ~9,200 steps instead of ~36,600. The model is
  scored on `heldout` about five times per epoch; the best (rate, step) is the teacher.
- Near chance: the teacher is flagged when its held-out score is within `chance_margin` of what
  always predicting the majority class (classification) or a constant (correlations, MCC: 0)
  scores: two standard errors of a chance-level score on the held-out split, at least 2 points
  (an entailment task of 250 held-out rows: 6.3 accuracy points, so the 54.9% of a teacher where
  the majority class scores 52.7% is chance; SST-2's 2000 rows: 2.2).
- Task distillation (from the general FFF model): the loss of e2e.py (logits KD plus every layer's
  hidden states at weight TASK_HIDDEN_WEIGHT), batch 128, learning rates TASK_LR and TASK_FFF_LR.
  The routing learns too: soft for the first TASK_SOFT_FRAC of the steps (temperature
  TASK_T_START -> 0.03, with the hardening loss), then hard, so that a tree fitted on other text
  can move to the task's (held-out scores of four tasks, docs/results/acceptability/README.md:
  frozen routing lost most where the task's text was of a kind the general model had not seen).
  Every held-out score is of the hard forward, so the model kept is the one the kernels run, even
  when the stopping rule ends the run in its soft part. The learning data are the learning split
  plus perturbed copies (augment.py): as many copies as bring it to 100k examples, at most 8. Up
  to 4000 steps; scored on `heldout` every 250 steps; stops after 4 scores without a gain; the
  best is kept.
"""
import math
import random

HELDOUT_SHARE, HELDOUT_MIN, HELDOUT_MAX = 0.1, 200, 2000
SMALL_TASK, SMALL_BATCH, LARGE_BATCH = 20_000, 32, 128
DISTILL_STEPS, DISTILL_BATCH, EVAL_EVERY, PATIENCE = 4000, 128, 250, 4
TRANSFER_EXAMPLES, MAX_COPIES = 100_000, 8
NEAR_CHANCE_POINTS, NEAR_CHANCE_ERRORS = 2.0, 2.0
TASK_HIDDEN_WEIGHT = 1.0  # logits alone (0) scored no better on held-out splits (README: the acceptability task)
TASK_LR, TASK_FFF_LR = 1e-4, 5e-4  # everything but the FFF layers, and those; three times both, or the FFF layers at
#                                  2e-3, no better (docs/results/acceptability/README.md)
TASK_AVERAGE_STEPS = 0  # the weights' moving average over EVAL_EVERY steps, scored and kept (train.py): lower held-out
#                         scores on three tasks of four (docs/results/acceptability/README.md)
TASK_SOFT_FRAC, TASK_T_START = 0.5, 0.1  # held-out, against frozen routing: +2.1/+2.5 (acceptability), +0.2 (STS-B),
#                                      +0.1 (SST-2), -0.5/-1.2 (MRPC); a quarter soft: in between on both it ran on


def split_heldout(rows: list[tuple], seed: int, classification: bool) -> tuple[list, list]:
    """(learning rows, held-out rows): a seeded, label-stratified share of train."""
    n = min(HELDOUT_MAX, max(HELDOUT_MIN, int(HELDOUT_SHARE * len(rows))))
    n = min(n, len(rows) // 2)
    rng = random.Random(seed)
    index = list(range(len(rows)))
    rng.shuffle(index)
    if classification:  # take each label's share of the held-out rows
        by_label = {}
        for i in index:
            by_label.setdefault(rows[i][-1], []).append(i)
        held = []
        for label, idx in sorted(by_label.items()):
            held += idx[: round(n * len(idx) / len(rows))]
    else:
        held = index[:n]
    taken = set(held)
    return [rows[i] for i in index if i not in taken], [rows[i] for i in sorted(held)]


def finetune_plan(n_examples: int) -> tuple[list[float], int, int]:
    """(learning rates to try, epochs, batch) for a learning split of n_examples."""
    epochs = 10 if n_examples < 10_000 else 5 if n_examples < 100_000 else 3
    if n_examples < SMALL_TASK:
        return [2e-5, 5e-5, 1e-4], epochs, SMALL_BATCH
    return [1e-4], epochs, LARGE_BATCH


def evaluations_per_epoch(n_examples: int, batch: int) -> int:
    """Steps between held-out scores: about five per epoch."""
    return max(1, math.ceil(n_examples / batch / 5))


def augment_copies(n_examples: int) -> int:
    return max(0, min(MAX_COPIES, math.ceil(TRANSFER_EXAMPLES / max(n_examples, 1)) - 1))


def chance_score(task, heldout: list[tuple], metric: str) -> float:
    """What predicting the majority class (or a constant) scores on the held-out rows, in percent."""
    if metric in ("accuracy",):
        labels = [r[-1] for r in heldout]
        return 100 * max(labels.count(x) for x in set(labels)) / len(labels)
    if metric == "f1":  # always the positive class
        pos = sum(1 for r in heldout if r[-1] == 1) / len(heldout)
        return 100 * 2 * pos / (1 + pos)
    return 0.0  # matthews, pearson, spearman of a constant


def chance_margin(chance: float, metric: str, n: int) -> float:
    """How far above `chance` (percent) a score on n held-out rows must be not to be chance."""
    if metric in ("accuracy", "f1"):  # binomial error of a chance-level rate (for F1 of always-positive, about it)
        p = chance / 100
        error = math.sqrt(p * (1 - p) / n)
    else:  # MCC and correlations of an unrelated prediction: about 1/sqrt(n)
        error = 1 / math.sqrt(n)
    return max(NEAR_CHANCE_POINTS, NEAR_CHANCE_ERRORS * 100 * error)
