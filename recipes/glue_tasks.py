"""The nine GLUE tasks: where their text and labels are, how they are scored, how to read them.

Data comes from the standard GLUE TSV layout (one folder per task, train.tsv and dev.tsv, as the
usual download script writes them) or, when that is absent and the `datasets` package can reach
the hub, from the hub's `glue` configs. Metrics come from scikit-learn and scipy.
"""
import csv
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from fffconvert.errors import Advice
from fffconvert.texts import MAX_BROKEN_SHARE


@dataclass(frozen=True)
class Task:
    folder: str  # GLUE folder name
    text: tuple  # TSV column names of the one or two texts (CoLA: column numbers; it has no header)
    label: str | int  # TSV column of the label
    metrics: tuple  # first one is the task's headline metric
    labels: tuple = ()  # label strings in the TSV, in class order; () = already 0..n-1
    num_labels: int = 2
    dev: tuple = ("dev",)  # dev split file names (MNLI has two)
    hub: tuple = ()  # field names in the hub's `glue` config


TASKS = {
    "cola": Task("CoLA", (3,), 1, ("matthews",), hub=("sentence",)),
    "sst2": Task("SST-2", ("sentence",), "label", ("accuracy",), hub=("sentence",)),
    "mrpc": Task("MRPC", ("#1 String", "#2 String"), "Quality", ("f1", "accuracy"), hub=("sentence1", "sentence2")),
    "qqp": Task("QQP", ("question1", "question2"), "is_duplicate", ("f1", "accuracy"), hub=("question1", "question2")),
    "stsb": Task("STS-B", ("sentence1", "sentence2"), "score", ("pearson", "spearman"), num_labels=1,
                 hub=("sentence1", "sentence2")),
    "mnli": Task("MNLI", ("sentence1", "sentence2"), "gold_label", ("accuracy",),
                 labels=("entailment", "neutral", "contradiction"), num_labels=3,
                 dev=("dev_matched", "dev_mismatched"), hub=("premise", "hypothesis")),
    "qnli": Task("QNLI", ("question", "sentence"), "label", ("accuracy",), labels=("entailment", "not_entailment"),
                 hub=("question", "sentence")),
    "rte": Task("RTE", ("sentence1", "sentence2"), "label", ("accuracy",), labels=("entailment", "not_entailment"),
                hub=("sentence1", "sentence2")),
    "wnli": Task("WNLI", ("sentence1", "sentence2"), "label", ("accuracy",), hub=("sentence1", "sentence2")),
}


class DataError(ValueError):
    """A missing or malformed data file; the message names the file and the line."""


class DataWarning(Advice):
    """Rows left out of a data file; the message names the file and the lines."""


# A row with too few columns is a line that a newline inside a field broke in two (QQP's train.tsv
# has a few); up to texts.MAX_BROKEN_SHARE of a file's rows are left out, with a warning, as the reference
# GLUE loaders leave them out. More means a file of another layout: an error.
def read_tsv(path: Path, task: Task) -> list[tuple]:
    """Rows of (text, [text2,] label) from a GLUE TSV file."""
    if not path.exists():
        raise DataError(f"{path}: no such file (expected the GLUE layout <data-dir>/{task.folder}/{path.name})")
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: MRPC starts with a byte-order mark
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e})")
    if not rows:
        raise DataError(f"{path}: no rows")
    if isinstance(task.label, int):  # CoLA: no header
        header, body, first = None, rows, 1
        cols, label_col = list(task.text), task.label
    else:
        header, body, first = rows[0], rows[1:], 2
        missing = [c for c in (*task.text, task.label) if c not in header]
        if missing:
            raise DataError(f"{path}, line 1: header lacks column(s) {missing}; it has {header}")
        cols, label_col = [header.index(c) for c in task.text], header.index(task.label)
    out, broken = [], []
    width = max(*cols, label_col) + 1
    for n, row in enumerate(body, start=first):
        if not row or row == [""]:
            continue
        if len(row) < width:
            broken.append((n, len(row)))
            continue
        try:
            label = _label(row[label_col], task)
        except ValueError:
            raise DataError(f"{path}, line {n}: bad label {row[label_col]!r}")
        out.append((*(row[c] for c in cols), label))
    if len(broken) > MAX_BROKEN_SHARE * (len(out) + len(broken)):
        n, got = broken[0]
        raise DataError(f"{path}, line {n}: {got} columns, expected at least {width}")
    if broken:
        lines = ", ".join(str(n) for n, _ in broken[:5]) + (", ..." if len(broken) > 5 else "")
        warnings.warn(f"{path}: left out {len(broken)} broken line(s) of too few columns ({lines})", DataWarning)
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def _label(value: str, task: Task):
    if task.num_labels == 1:
        score = float(value)
        if not math.isfinite(score):  # float() takes "nan" and "inf": a score no loss can learn from
            raise ValueError(value)
        return score
    if task.labels:
        return task.labels.index(value)
    label = int(value)
    if not 0 <= label < task.num_labels:
        raise ValueError(value)
    return label


def load_split(name: str, split: str, data_dir=None) -> list[tuple]:
    """train or a dev split of a task, from `data_dir` (GLUE TSV layout) or else the hub."""
    task = TASKS[name]
    if data_dir is not None:
        return read_tsv(Path(data_dir) / task.folder / f"{split}.tsv", task)
    try:
        import datasets
    except ImportError:
        raise DataError("no --data-dir given and the `datasets` package is not installed to fetch GLUE from the hub")
    hub_split = {"dev": "validation", "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}
    ds = datasets.load_dataset("glue", name, split=hub_split.get(split, split))
    return [(*(ex[f] for f in task.hub), ex["label"]) for ex in ds]


def score(name: str, predictions, labels) -> dict:
    """The task's standard metrics, in percent."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    fns = {"accuracy": accuracy_score, "f1": f1_score, "matthews": matthews_corrcoef,
           "pearson": lambda y, p: pearsonr(p, y)[0], "spearman": lambda y, p: spearmanr(p, y)[0]}
    return {m: 100 * float(fns[m](labels, predictions)) for m in TASKS[name].metrics}
