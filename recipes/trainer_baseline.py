"""The yardstick for the recipe's dense teacher: a standard `transformers.Trainer` finetune.

    python recipes/trainer_baseline.py --task mrpc --data-dir GLUE --output out/baseline/mrpc

What a practitioner runs without a recipe: all of train, the run_glue example's settings (learning
rate 2e-5, linear decay, 10% warm-up, weight decay 0.01), the recipe's epochs and batch for the
task's size (glue_rules.finetune_plan: the same budget), the last checkpoint scored on dev.
Writes baseline.json under --output.
"""
import json
import math
import sys
import time
from pathlib import Path

import click
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import glue_rules as rules  # noqa: E402
from batches import Collate  # noqa: E402
from glue import evaluate, headline  # noqa: E402
from glue_tasks import TASKS, load_split  # noqa: E402

from fffconvert.atomic import write_text  # noqa: E402
from fffconvert.cli import SEED, FiniteFloat, NonEmptyName, NonEmptyPath  # noqa: E402
from fffconvert.sources import embedded_model_path  # noqa: E402


@click.command()
@click.option("--task", type=click.Choice(sorted(TASKS)), required=True)
@click.option("--model", "source", type=NonEmptyName(), default=None, help="Default: the embedded all-MiniLM-L6-v2.")
@click.option("--data-dir", type=NonEmptyPath(file_okay=False, exists=True), required=True)
@click.option("--output", type=NonEmptyPath(file_okay=False), required=True)
@click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=2e-5, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
def main(task, source, data_dir, output, lr, seed):
    t0 = time.perf_counter()
    source = source or str(embedded_model_path())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = load_split(task, "train", data_dir)
    dev = {split: load_split(task, split, data_dir) for split in TASKS[task].dev}
    regression = TASKS[task].num_labels == 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    collate = Collate(tokenizer, regression, 128)
    transformers.set_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=TASKS[task].num_labels,
                                                                       dtype=torch.float32)
    _, epochs, batch = rules.finetune_plan(len(train))
    steps = epochs * math.ceil(len(train) / batch)
    args = transformers.TrainingArguments(
        output_dir=str(Path(output) / "trainer"), learning_rate=lr, per_device_train_batch_size=batch,
        num_train_epochs=epochs, warmup_steps=int(0.1 * steps), weight_decay=0.01, seed=seed, save_strategy="no", report_to=[],
        logging_steps=200, tf32=device == "cuda", remove_unused_columns=False, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, data_collator=collate)
    trainer.train()
    metrics = evaluate(trainer.model.to(device), task, dev, collate, device)
    result = {"task": task, "model": source, "lr": lr, "epochs": epochs, "batch": batch,
              "train": len(train), "dev": metrics, "headline": headline(task, metrics),
              "seconds": time.perf_counter() - t0, "command": " ".join(["python", *sys.argv])}
    Path(output).mkdir(parents=True, exist_ok=True)
    write_text(Path(output) / "baseline.json", json.dumps(result, indent=2))
    click.echo(json.dumps(result))


if __name__ == "__main__":
    main()
