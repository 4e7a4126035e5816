"""GLUE recipe: finetune the dense model, convert it, distill it, evaluate both; report accuracy and speed.

    python recipes/glue.py --task sst2 --depth 10 --data-dir ../shared/glue --output out/glue/sst2
    python recipes/glue.py --task mrpc --depth 4,6,8,10 ...        # a sweep: curve (PNG) and table
    torchrun --nproc-per-node 2 recipes/glue.py --task sst2 ...     # several GPUs (DDP)

MODEL (--model) is a local folder or a hub name (default: the embedded all-MiniLM-L6-v2). If it
already is a sequence classifier with the task's number of labels it is used as the dense model
as it is; otherwise it is finetuned first. Writes, under --output: dense/ (the finetuned model),
fff-d<D>/ (each converted model), results.json and results.md (and sweep.png for several depths).
"""
import copy
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from augment import augment  # noqa: E402
from glue_tasks import TASKS, DataError, load_split, score  # noqa: E402

import fffconvert  # noqa: E402
from fffconvert.bench import DTYPES, BenchConfig, bench_layer, time_models  # noqa: E402
from fffconvert.convert import FFFConfig  # noqa: E402
from fffconvert.distill import DistillConfig  # noqa: E402
from fffconvert.e2e import E2EConfig, distill_model, routing_agreement, soft_routing  # noqa: E402
from fffconvert.sources import embedded_model_path  # noqa: E402
from fffconvert.errors import UserError  # noqa: E402
from fffconvert.surgery import spec_for  # noqa: E402
from fffconvert.train import TrainConfig, fit, init_distributed, rank_and_world  # noqa: E402


def make_collate(tokenizer, regression: bool, max_length: int):
    def collate(rows):
        texts = list(zip(*rows))
        enc = tokenizer(*[list(t) for t in texts[:-1]], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        enc["labels"] = torch.tensor(texts[-1], dtype=torch.float32 if regression else torch.long)
        return dict(enc)
    return collate


@torch.no_grad()
def evaluate(model, task: str, dev: dict, collate, device, batch_size=128) -> dict:
    """Metrics on every dev split; keys prefixed with the split when there are several."""
    model.eval()
    out = {}
    for split, rows in dev.items():
        preds, labels = [], []
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[i: i + batch_size]).items()}
            labels.append(batch.pop("labels").cpu())
            logits = model(**batch).logits.float().cpu()
            preds.append(logits[:, 0] if TASKS[task].num_labels == 1 else logits.argmax(-1))
        metrics = score(task, torch.cat(preds).numpy(), torch.cat(labels).numpy())
        out.update({(f"{split}_{k}" if len(dev) > 1 else k): v for k, v in metrics.items()})
    return out


def dense_model(source: str, task: str, train, collate, args, device, out: Path):
    """The finetuned dense classifier: MODEL itself if it already is one for this task, else finetuned."""
    config = transformers.AutoConfig.from_pretrained(source)
    spec_for(config)
    num_labels = TASKS[task].num_labels
    arch = (config.architectures or [""])[0]
    if arch.endswith("ForSequenceClassification") and config.num_labels == num_labels:
        return transformers.AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32).to(device), None
    saved = out / "dense"
    if args.resume and (saved / "config.json").exists():
        return transformers.AutoModelForSequenceClassification.from_pretrained(saved, dtype=torch.float32).to(device), None
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=num_labels, dtype=torch.float32).to(device)
    steps = args.finetune_steps or min(max(3 * len(train) // args.batch_size, 1000), 2000)
    cfg = TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    stats = fit(model, train, collate, lambda m, b, s: m(**b).loss, cfg, device=device,
                checkpoint_dir=out / "checkpoints" / "dense", resume=args.resume, desc="finetuning")
    if rank_and_world()[0] == 0:
        model.save_pretrained(saved)
    return model, stats


def measure_speed(dense, fff, cfg_layer: dict, device, batch, seq_len) -> dict:
    """FFN-layer and end-to-end speed ratios of the FFF model against the dense one, on this machine."""
    bc = BenchConfig(device=device.split(":")[0], dtype="bfloat16" if "cuda" in device else "float32",
                     tokens=[batch * seq_len], repeats=10, model=False, **cfg_layer)
    layer = bench_layer(bc)[0]
    dtype = DTYPES[bc.dtype]
    d, f = copy.deepcopy(dense).to(device, dtype).eval(), fff.to(device, dtype).eval()  # fff: its last use
    ids = torch.randint(1000, dense.config.vocab_size, (batch, seq_len), device=device)
    t = time_models(d, f, ids, bc)
    return {"dtype": bc.dtype, "tokens": batch * seq_len, "ffn_layer_speedup": layer["speedup_kernel"],
            "model_speedup": t["speedup"], "model_speedup_graph": t.get("speedup_graph"), "model": t}


def convert_and_distill(dense, tokenizer, depth, task, train, dev, collate, args, device, out: Path) -> dict:
    t0 = time.perf_counter()
    student = copy.deepcopy(dense)
    texts = [row[:-1] if len(row) > 2 else row[0] for row in train]
    config = FFFConfig(depth=depth, calib_tokens=args.calib_tokens, seed=args.seed,
                       distill=DistillConfig(steps=args.layerwise_steps), e2e=E2EConfig(steps=0))
    student = fffconvert.convert(student, config, texts, tokenizer, device=device, progress=rank_and_world()[0] == 0)
    t_convert = time.perf_counter() - t0
    e2e = E2EConfig(steps=args.distill_steps, batch_size=args.distill_batch_size, lr=args.lr, fff_lr=args.fff_lr,
                    checkpoint_every=args.checkpoint_every)
    copies = args.augment if args.augment is not None else (4 if len(train) < 20000 else 2)
    transfer = train + augment(train, copies, seed=args.seed)
    stats = distill_model(student, dense, transfer, collate, e2e, device=device, seed=args.seed,
                          checkpoint_dir=out / "checkpoints" / f"distill-d{depth}", resume=args.resume)
    t_distill = time.perf_counter() - t0 - t_convert
    hard = evaluate(student, task, dev, collate, device)
    with soft_routing(student):
        soft = evaluate(student, task, dev, collate, device)
    first_dev = next(iter(dev.values()))
    batches = [{k: v.to(device) for k, v in collate(first_dev[i: i + 64]).items()} for i in range(0, min(len(first_dev), 512), 64)]
    fff = student.config.fff
    row = {"depth": depth, "leaf_width": fff["layers"][0]["leaf_width"], "rows_per_token": fff["rows_per_token"],
           "fff": hard, "fff_soft": soft,
           "agreement": routing_agreement(student, batches), "distill_examples_per_s": stats["examples_per_s"],
           "distill_steps": e2e.steps, "distill_batch_size": e2e.batch_size, "distill_examples": len(transfer),
           "seconds": {"convert": t_convert, "distill": t_distill},
           "layerwise": fff["layers"]}
    if rank_and_world()[0] == 0:
        fffconvert.save_pretrained(student, out / f"fff-d{depth}", tokenizer, overwrite=True,
                                   command=" ".join(["python", *sys.argv]))
    return row, student


def write_reports(results: dict, out: Path):
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    task, dense = results["task"], results["dense"]
    head = TASKS[task].metrics[0]
    key = next(k for k in dense if k.endswith(head))
    lines = [f"# GLUE {task}: dense vs FFF ({results['model']})", "",
             f"Dense (finetuned) dev {key}: **{dense[key]:.2f}**. Machine: {results['machine']}.", "",
             "| depth | FFN rows per token | FFF dev " + key + " | retention | soft-routing " + key
             + " | hard/soft agreement | FFN layer speedup | model speedup | convert s | distill s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results["fff"]:
        s = r.get("speed", {})
        graph = f" ({s['model_speedup_graph']:.2f}x as CUDA graphs)" if s.get("model_speedup_graph") else ""
        lines.append(f"| {r['depth']} | {r['rows_per_token']:.1f} of {results['dense_ffn_width']} | {r['fff'][key]:.2f} "
                     f"| {100 * r['fff'][key] / dense[key]:.1f}% | {r['fff_soft'][key]:.2f} | {r['agreement']:.3f} "
                     f"| {s.get('ffn_layer_speedup', float('nan')):.1f}x | {s.get('model_speedup', float('nan')):.2f}x{graph} "
                     f"| {r['seconds']['convert']:.0f} | {r['seconds']['distill']:.0f} |")
    speed = results["fff"][0].get("speed", {})
    lines += ["", f"All metrics: dense {json.dumps({k: round(v, 2) for k, v in dense.items()})}",
              f"Speed measured at {speed.get('tokens')} tokens, {speed.get('dtype')}, side by side in one process.",
              f"Total wall time: {results['seconds_total']:.0f} s. Command: `{results['command']}`"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if len(results["fff"]) > 1:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [r["rows_per_token"] for r in results["fff"]]
        ax.plot(xs, [r["fff"][key] for r in results["fff"]], "o-", label="FFF (hard routing)")
        for x, r in zip(xs, results["fff"]):
            ax.annotate(f"D={r['depth']}", (x, r["fff"][key]), textcoords="offset points", xytext=(4, -10), fontsize=8)
        ax.axhline(dense[key], color="gray", ls="--", label=f"dense ({results['dense_ffn_width']} neurons)")
        ax.set_xlabel("FFN weight rows touched per token")
        ax.set_ylabel(f"dev {key}")
        ax.set_title(f"GLUE {task}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "sweep.png", dpi=120)


@click.command()
@click.option("--task", type=click.Choice(sorted(TASKS)), required=True)
@click.option("--model", "source", default=None, help="Local folder or hub name. Default: embedded all-MiniLM-L6-v2.")
@click.option("--depth", default="10", help="Tree depth, or comma-separated depths for a sweep.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder in the GLUE TSV layout. Default: the hub, through `datasets`.")
@click.option("--output", type=click.Path(file_okay=False), required=True)
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=5e-5, show_default=True)
@click.option("--fff-lr", type=float, default=5e-4, show_default=True, help="Learning rate of the FFF layers.")
@click.option("--finetune-steps", type=int, default=None, help="Default: 3 epochs, within 1000 to 2000 steps.")
@click.option("--distill-steps", type=int, default=3000, show_default=True)
@click.option("--distill-batch-size", type=int, default=128, show_default=True)
@click.option("--augment", type=int, default=None,
              help="Perturbed copies of each training example added to the distillation data (recipes/augment.py). "
                   "Default: 4 below 20k training examples, else 2.")
@click.option("--layerwise-steps", type=int, default=100, show_default=True)
@click.option("--calib-tokens", type=int, default=32768, show_default=True)
@click.option("--max-train", type=int, default=None, help="Use only the first N training rows (quick runs).")
@click.option("--max-dev", type=int, default=None, help="Use only the first N rows of each dev split.")
@click.option("--max-length", type=int, default=128, show_default=True)
@click.option("--checkpoint-every", type=int, default=500, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the checkpoints under --output.")
@click.option("--no-speed", is_flag=True, help="Skip the speed measurement.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(task, source, depth, data_dir, output, device, **kw):
    """Finetune, convert, distill and evaluate one GLUE task; write results.json and results.md."""
    args = SimpleNamespace(**kw)
    try:
        depths = [int(d) for d in depth.split(",")]
        run(task, source, depths, data_dir, Path(output), device, args)
    except (DataError, UserError, ValueError) as e:
        if os.environ.get("FFFCONVERT_DEBUG"):
            raise
        click.echo(f"Error: {e}", err=True)
        sys.exit(2)


def run(task, source, depths, data_dir, out: Path, device, args):
    t0 = time.perf_counter()
    device = init_distributed(device)
    torch.backends.cuda.matmul.allow_tf32 = True  # as HF Trainer's tf32=True: training's matmuls on tensor cores
    rank, world = rank_and_world()
    source = source or str(embedded_model_path())
    train = load_split(task, "train", data_dir)[: args.max_train]
    dev = {split: load_split(task, split, data_dir)[: args.max_dev] for split in TASKS[task].dev}
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    collate = make_collate(tokenizer, TASKS[task].num_labels == 1, args.max_length)
    dense, finetune = dense_model(source, task, train, collate, args, device, out)
    results = {"task": task, "model": source, "world_size": world, "command": " ".join(["python", *sys.argv]),
               "machine": torch.cuda.get_device_name() if "cuda" in device else f"CPU, {torch.get_num_threads()} threads",
               "dense": evaluate(dense, task, dev, collate, device), "fff": [],
               "dense_ffn_width": dense.config.intermediate_size if hasattr(dense.config, "intermediate_size") else None,
               "finetune": None if finetune is None else {k: finetune[k] for k in ("steps", "seconds", "examples_per_s")}}
    for depth in depths:
        row, student = convert_and_distill(dense, tokenizer, depth, task, train, dev, collate, args, device, out)
        if not args.no_speed and rank == 0:
            fff = student.config.fff
            batch, seq = (64, 128) if "cuda" in device else (8, 128)
            row["speed"] = measure_speed(dense, student, {"hidden": dense.config.hidden_size, "ffn": fff["dense_ffn_width"],
                                                          "depth": depth, "leaf_width": fff["layers"][0]["leaf_width"]}, device, batch, seq)
        results["fff"].append(row)
        results["seconds_total"] = time.perf_counter() - t0
        if rank == 0:
            write_reports(results, out)
            click.echo((out / "results.md").read_text())


if __name__ == "__main__":
    main()
