"""Where a step of the recipe's dense finetuning spends its time: building the batch (indices,
tokenization, copy to the device), forward + backward, clipping + AdamW (synchronized phases), with
each batch tokenized anew and with batches.Collate (each row tokenized once).

    python recipes/profile_finetune_step.py --model MINILM --data-dir GLUE [--task stsb] [--device cuda]

Prints ms per phase and steps/s (unsynchronized) at batch 32 and 128, interleaved in one process.
"""
import sys
import time
from pathlib import Path

import click
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batches import Collate  # noqa: E402
from glue_tasks import TASKS, load_split  # noqa: E402

from fffconvert.sources import embedded_model_path  # noqa: E402
from fffconvert.train import TrainConfig, batch_indices  # noqa: E402


def per_batch(tokenizer, regression):
    def collate(rows):
        enc = tokenizer(*[list(c) for c in zip(*[r[:-1] for r in rows])], padding=True, truncation=True,
                        max_length=128, return_tensors="pt")
        enc["labels"] = torch.tensor([r[-1] for r in rows], dtype=torch.float32 if regression else torch.long)
        return dict(enc)
    return collate


@click.command()
@click.option("--task", type=click.Choice(sorted(TASKS)), default="stsb", show_default=True)
@click.option("--model", "source", default=None, help="Default: the embedded all-MiniLM-L6-v2.")
@click.option("--data-dir", required=True)
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option("--steps", default=100, show_default=True)
def main(task, source, data_dir, device, steps):
    source = source or str(embedded_model_path())
    torch.backends.cuda.matmul.allow_tf32 = True
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    rows = load_split(task, "train", data_dir)
    regression = TASKS[task].num_labels == 1
    cached = Collate(tokenizer, regression, 128)
    t = time.perf_counter()
    cached.encode(rows)
    click.echo(f"{task}: {len(rows)} rows tokenized once in {time.perf_counter() - t:.2f} s; {device}")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=TASKS[task].num_labels, dtype=torch.float32).to(device).train()
    sync = torch.cuda.synchronize if "cuda" in device else (lambda: None)
    for batch_size in (32, 128):
        cfg = TrainConfig(steps=10 * steps, batch_size=batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)  # as fit's
        for name, collate in (("tokenized per batch", per_batch(tokenizer, regression)), ("Collate", cached)):
            phases = [0.0, 0.0, 0.0]

            def step(s, timed=False):
                wait = sync if timed else (lambda: None)  # phases need synchronizing; the steps/s run does not
                t0 = time.perf_counter()
                batch = {k: v.to(device) for k, v in collate([rows[i] for i in batch_indices(len(rows), cfg, s)]).items()}
                wait()
                t1 = time.perf_counter()
                loss = model(**batch).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                wait()
                t2 = time.perf_counter()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                wait()
                if timed:
                    for i, dt in enumerate((t1 - t0, t2 - t1, time.perf_counter() - t2)):
                        phases[i] += dt

            for s in range(10):
                step(s)
            sync()
            t = time.perf_counter()
            for s in range(10, 10 + steps):
                step(s)
            sync()
            rate = steps / (time.perf_counter() - t)
            for s in range(steps):
                step(s, timed=True)
            ms = [1e3 * p / steps for p in phases]
            click.echo(f"batch {batch_size}, {name}: {rate:.1f} steps/s; per step, synchronized: batch {ms[0]:.2f} ms, "
                       f"forward + backward {ms[1]:.2f} ms, clip + AdamW {ms[2]:.2f} ms")


if __name__ == "__main__":
    main()
