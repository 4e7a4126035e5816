"""How well does the recipe's checkpoint rule pick its teacher? Evidence across tasks and seeds.

    python recipes/teacher_curves.py record --task mrpc --seed 1 --data-dir GLUE --output curves/mrpc-1.json
    python recipes/teacher_curves.py compare curves/*.json

`record` runs the recipe's dense finetuning (glue.teacher_model: every rate of the plan) and scores
the held-out split and dev at each of its evaluations. `compare` prints the dev score of the
checkpoint that each selection rule would have taken, per curve file and on average. Dev is read
here only to judge rules; the recipe itself never reads it.
"""
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import click
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glue_rules as rules  # noqa: E402
from batches import Collate  # noqa: E402
from glue import evaluate, headline, read_train, refuse, teacher_model  # noqa: E402
from glue_tasks import TASKS, DataError, load_split  # noqa: E402

from fffconvert.atomic import write_text  # noqa: E402
from fffconvert.cli import SEED, NonEmptyName, NonEmptyPath  # noqa: E402
from fffconvert.errors import UserError  # noqa: E402
from fffconvert.sources import embedded_model_path  # noqa: E402


@click.group()
def main():
    """Record teacher-finetuning curves; compare checkpoint-selection rules on them."""


@main.command()
@click.option("--task", type=click.Choice(sorted(TASKS)), required=True)
@click.option("--model", "source", type=NonEmptyName(), default=None, help="Default: the embedded all-MiniLM-L6-v2.")
@click.option("--data-dir", type=NonEmptyPath(file_okay=False, exists=True), required=True)
@click.option("--output", type=NonEmptyPath(dir_okay=False), required=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
def record(task, source, data_dir, output, seed):
    """Held-out and dev score at every evaluation of the recipe's teacher finetuning."""
    source = source or str(embedded_model_path())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:  # every input is read before any work
        dev = load_split(task, "dev", data_dir)
        train = read_train(task, data_dir)
        if not Path(output).resolve().parent.is_dir():
            raise UserError(f"--output {output}: its folder does not exist")
    except (DataError, UserError) as e:
        refuse(e)
    torch.backends.cuda.matmul.allow_tf32 = True  # as the recipe trains
    learn, heldout = rules.split_heldout(train, seed, TASKS[task].num_labels > 1)
    collate = Collate(transformers.AutoTokenizer.from_pretrained(source), TASKS[task].num_labels == 1, 128)
    curves = {}

    def observe(model, lr, heldout_score):
        dev_score = headline(task, evaluate(model, task, {"dev": dev}, collate, device))
        curves.setdefault(lr, []).append([heldout_score, dev_score])

    args = SimpleNamespace(seed=seed, resume=False, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        _, report = teacher_model(source, task, learn, heldout, collate, args, device, Path(tmp), observe=observe)
    runs = [{"lr": t["lr"], "seconds": t["seconds"], "curve": curves[t["lr"]]} for t in report["tried"]]
    result = {"task": task, "seed": seed, "steps": report["steps_per_run"], "heldout_size": len(heldout), "runs": runs}
    write_text(output, json.dumps(result))
    click.echo(f"Wrote {output}")


def trailing_mean(values: list[float], window: int) -> list[float]:
    spans = (values[max(0, i - window + 1): i + 1] for i in range(len(values)))
    return [sum(span) / len(span) for span in spans]


def pick(runs: list[dict], window: int) -> float:
    """Dev score of the (rate, evaluation) with the best trailing mean of `window` held-out scores
    (window 1: the recipe's rule, the best held-out score; ties go to the earlier evaluation)."""
    candidates = [(smoothed, -i, run["curve"][i][1]) for run in runs
                  for i, smoothed in enumerate(trailing_mean([h for h, _ in run["curve"]], window))]
    return max(candidates)[2]


def read_curves(path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        runs = data["runs"]
        if not runs or not all(run["curve"] and all(len(pair) == 2 for pair in run["curve"]) for run in runs):
            raise ValueError("a run without [held-out, dev] scores")
        if {"task", "seed"} - data.keys() or not all(isinstance(run.get("lr"), (int, float)) for run in runs):
            raise ValueError("its task, seed or a run's lr is missing")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        refuse(UserError(f"{path} is not a file `record` wrote ({e})"))
    return data


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--windows", default="1,2,3,5", show_default=True, help="Trailing-mean windows to compare (1: the recipe's rule).")
def compare(files, windows):
    """Dev score of the checkpoint each rule takes, per curve file and on average (markdown)."""
    try:
        windows = [int(w) for w in windows.split(",")]
        if min(windows) < 1:
            raise ValueError
    except ValueError:
        refuse(UserError(f"--windows must be integers >= 1, comma-separated; got {windows!r}"))
    curves = [read_curves(path) for path in files]  # all read before anything is printed
    header = ["best held-out (recipe)" if w == 1 else f"best mean of {w}" for w in windows]
    click.echo("| curves | " + " | ".join(header + ["last, best rate", "best dev (oracle)"]) + " |")
    click.echo("|---" * (len(header) + 3) + "|")
    totals = []
    for data in curves:
        runs = data["runs"]
        best_rate = max(runs, key=lambda r: max(h for h, _ in r["curve"]))
        row = [pick(runs, w) for w in windows]
        row += [best_rate["curve"][-1][1], max(d for r in runs for _, d in r["curve"])]
        totals.append(row)
        rates = ", ".join(f"{r['lr']:g}" for r in runs)
        click.echo(f"| {data['task']} seed {data['seed']} (rates {rates}) | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    means = [sum(col) / len(col) for col in zip(*totals)]
    click.echo(f"| mean of {len(files)} | " + " | ".join(f"{v:.2f}" for v in means) + " |")


if __name__ == "__main__":
    main()
