"""GLUE recipe: a dense teacher, an FFF student in two stages, both scored on dev; accuracy and speed.

    fffconvert MODEL --output out/general                    # once: the general FFF model
    python recipes/glue.py --task sst2 --general out/general --data-dir GLUE --output out/glue/sst2
    python recipes/glue.py --task mrpc --depth 6,8,10 ...      # general models made here: a sweep
    python recipes/glue.py --task sst2 --teacher-only ...       # the teacher now (e.g. while the
    python recipes/glue.py --task sst2 --resume --general ...   #   general model converts), the student later
    torchrun --nproc-per-node 2 recipes/glue.py --task sst2 ... # several GPUs (DDP)

1. Teacher: MODEL (--model; default the embedded all-MiniLM-L6-v2) if it already is a classifier
   for the task, else MODEL finetuned on the task.
2. Student, as the strongest compressed BERTs are made: the general, task-agnostic FFF model
   (--general, a folder `fffconvert MODEL` wrote; else converted here, at each --depth, on the
   general corpus plus the task's training text) with the teacher's task head, then distilled on
   the task (logits and hidden states; soft routing, then hard).
3. Both scored on dev, with the retention, and timed side by side.

Every default is a rule of the task's own training data (glue_rules.py); dev is only reported.
Writes, under --output: dense/, fff-<name>/, results.json, results.md (sweep.png for a sweep).
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
import glue_rules as rules  # noqa: E402
from augment import augment  # noqa: E402
from batches import Collate  # noqa: E402
from glue_tasks import TASKS, DataError, load_split, score  # noqa: E402

import fffconvert  # noqa: E402
from fffconvert.cli import SEED, FiniteFloat, NonEmptyName, NonEmptyPath, one_line_warnings  # noqa: E402
from fffconvert.bench import DTYPES, BenchConfig, bench_layer, random_ids, time_models  # noqa: E402
from fffconvert.atomic import check_writable, write_text  # noqa: E402
from fffconvert.convert import FFFConfig  # noqa: E402
from fffconvert.e2e import E2EConfig, distill_model, routing_agreement  # noqa: E402
from fffconvert.errors import UserError  # noqa: E402
from fffconvert.folders import read_config  # noqa: E402
from fffconvert.io import check_converted_config  # noqa: E402
from fffconvert.quantize import quantize  # noqa: E402
from fffconvert.sources import embedded_model_path, load_dense  # noqa: E402
from fffconvert.surgery import fff_layers  # noqa: E402
from fffconvert.texts import default_texts  # noqa: E402
from fffconvert.train import TrainConfig, fit, init_distributed, rank_and_world  # noqa: E402


@torch.no_grad()
def evaluate(model, task: str, splits: dict, collate, device, batch_size=128) -> dict:
    """Metrics on every split; keys prefixed with the split when there are several."""
    model.eval()
    out = {}
    for split, rows in splits.items():
        preds, labels = [], []
        for i in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[i: i + batch_size]).items()}
            labels.append(batch.pop("labels").cpu())
            logits = model(**batch).logits.float().cpu()
            preds.append(logits[:, 0] if TASKS[task].num_labels == 1 else logits.argmax(-1))
        metrics = score(task, torch.cat(preds).numpy(), torch.cat(labels).numpy())
        out.update({(f"{split}_{k}" if len(splits) > 1 else k): v for k, v in metrics.items()})
    return out


def headline(task: str, metrics: dict) -> float:
    key = TASKS[task].metrics[0]
    return metrics[next(k for k in metrics if k.endswith(key))]


def with_chance(report: dict, task: str, heldout) -> dict:
    """The teacher's report with what chance scores on the held-out split, and whether it is near that."""
    metric = TASKS[task].metrics[0]
    chance = rules.chance_score(task, heldout, metric)
    margin = rules.chance_margin(chance, metric, len(heldout))
    report.update({"chance": chance, "chance_margin": margin, "near_chance": report["heldout"] <= chance + margin})
    return report


def teacher_model(source: str, task: str, learn, heldout, collate, args, device, out: Path, observe=None):
    """(teacher, report): MODEL if it is a classifier for the task, else the best finetuning on
    the held-out split over the rates, epochs and batch of glue_rules.finetune_plan.
    observe(model, lr, heldout score), if given, runs at each held-out evaluation (teacher_curves.py)."""
    num_labels = TASKS[task].num_labels
    config = transformers.AutoConfig.from_pretrained(source)
    arch = (config.architectures or [""])[0]
    if arch.endswith("ForSequenceClassification") and config.num_labels == num_labels:
        return transformers.AutoModelForSequenceClassification.from_pretrained(source, dtype=torch.float32).to(device), {}
    saved = out / "dense"
    if args.resume and (saved / "report.json").exists():
        model = transformers.AutoModelForSequenceClassification.from_pretrained(saved, dtype=torch.float32).to(device)
        return model, with_chance(json.loads((saved / "report.json").read_text()), task, heldout)  # today's rule
    rates, epochs, batch = rules.finetune_plan(len(learn))
    steps = epochs * max(1, len(learn) // batch)
    best, report = None, {"tried": []}
    for lr in rates:
        transformers.set_seed(args.seed)  # the head's initialization, then every step: a function of the seed
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, dtype=torch.float32).to(device)
        cfg = TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup=0.1, seed=args.seed,
                          checkpoint_every=args.checkpoint_every, eval_every=rules.evaluations_per_epoch(len(learn), batch))

        def score_heldout(m, lr=lr):
            value = headline(task, evaluate(m, task, {"heldout": heldout}, collate, device))
            if observe is not None:
                observe(m, lr, value)
            return value

        stats = fit(model, learn, collate, lambda m, b, s: m(**b).loss, cfg, device=device, desc=f"finetuning, lr {lr:g}",
                    checkpoint_dir=out / "checkpoints" / f"dense-lr{lr:g}", resume=args.resume, evaluate=score_heldout)
        report["tried"].append({"lr": lr, "best_step": stats["best_step"], "heldout": stats["best_score"],
                                "seconds": stats["seconds"]})
        if best is None or stats["best_score"] > best[1]:
            best = (model, stats["best_score"], lr, stats["best_step"])
        else:
            del model
    model, score_, lr, step = best
    report.update({"lr": lr, "step": step, "steps_per_run": steps, "batch": batch, "heldout": score_})
    with_chance(report, task, heldout)
    if rank_and_world()[0] == 0:
        model.save_pretrained(saved)
        write_text(saved / "report.json", json.dumps(report, indent=2))
    return model, report


def general_model(args, depth: int, source: str, learn, device, out: Path) -> Path:
    """The general FFF model of MODEL at `depth`: converted here (fffconvert's defaults) on the
    general corpus plus the task's learning texts, once per output folder."""
    path = out / f"general-d{depth}"
    if (path / "config.json").exists():
        return path
    src = load_dense(source)
    general, _ = default_texts(warn=lambda m: click.echo(m, err=True))
    texts = general + [" ".join(r[:-1]) for r in learn]
    e2e = E2EConfig() if args.general_steps is None else E2EConfig(steps=args.general_steps)
    model = fffconvert.convert(src.model, FFFConfig(depth=depth, seed=args.seed, e2e=e2e), texts, src.tokenizer,
                               device=device, pooling=src.pooling, progress=rank_and_world()[0] == 0)
    if rank_and_world()[0] == 0:
        fffconvert.save_pretrained(model.cpu(), path, src.tokenizer, overwrite=True, extra_files=src.extra_files)
    return path


def student_model(general: Path, teacher, task: str, device):
    """The general FFF model's body (or any body of the teacher's kind) with the teacher's task head (and pooler)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # the head it reports missing is the teacher's, copied next
    try:
        student = transformers.AutoModelForSequenceClassification.from_pretrained(
            general, num_labels=TASKS[task].num_labels, dtype=torch.float32)
    finally:
        transformers.logging.set_verbosity(verbosity)
    prefix = student.base_model_prefix + "."
    head = {k: v for k, v in teacher.state_dict().items() if not k.startswith(prefix) or k.startswith(prefix + "pooler.")}
    missing = set(head) - set(student.state_dict())
    if missing:
        raise UserError(f"the general model {general} does not fit the teacher's head ({sorted(missing)[:2]})")
    student.load_state_dict(head, strict=False)
    return student.to(device)


def transfer_rows(learn: list, seed: int) -> list:
    """The task stage's learning data: the learning split and its perturbed copies (glue_rules)."""
    return learn + augment(learn, rules.augment_copies(len(learn)), seed=seed)


def task_config(args) -> E2EConfig:
    """The task stage's schedule and loss (glue_rules)."""
    return E2EConfig(steps=args.max_distill_steps, batch_size=rules.DISTILL_BATCH, lr=rules.TASK_LR, fff_lr=rules.TASK_FFF_LR,
                     soft_frac=args.soft_frac, t_start=rules.TASK_T_START, hidden_weight=args.hidden_weight,
                     average_steps=rules.TASK_AVERAGE_STEPS, checkpoint_every=args.checkpoint_every)


def distill_on_task(student, teacher, name, task, learn, heldout, dev, collate, args, device, out: Path) -> dict:
    t0 = time.perf_counter()
    copies = rules.augment_copies(len(learn))
    transfer = transfer_rows(learn, args.seed)
    collate.encode(transfer)
    cfg = task_config(args)
    stats = distill_model(student, teacher, transfer, collate, cfg, device=device, seed=args.seed,
                          checkpoint_dir=out / "checkpoints" / f"distill-{name}", resume=args.resume,
                          evaluate=lambda m: headline(task, evaluate(m, task, {"heldout": heldout}, collate, device)),
                          eval_every=rules.EVAL_EVERY, patience=rules.PATIENCE)
    first_dev = next(iter(dev.values()))
    batches = [{k: v.to(device) for k, v in collate(first_dev[i: i + 64]).items()} for i in range(0, min(len(first_dev), 512), 64)]
    fff = student.config.fff
    row = {"name": name, "depths": sorted({r["depth"] for r in fff["layers"]}), "rows_per_token": fff["rows_per_token"],
           "fff": evaluate(student, task, dev, collate, device), "agreement": routing_agreement(student, batches),
           "distill": {k: stats[k] for k in ("steps", "best_step", "best_score", "examples_per_s", "evaluations")},
           "augment_copies": copies, "distill_examples": len(transfer), "seconds": time.perf_counter() - t0}
    if args.int8:  # what int8 for the remaining Linear layers costs (CPU kernels)
        row["fff_int8"] = evaluate(quantize(copy.deepcopy(student).cpu().float(), "int8"), task, dev, collate, "cpu")
    if rank_and_world()[0] == 0:
        fffconvert.save_pretrained(student, out / f"fff-{name}", overwrite=True, command=" ".join(["python", *sys.argv]))
    return row


def measure_speed(dense, fff, device, batch, seq_len) -> dict:
    """FFN-layer and whole-model speed of the FFF model against the dense one, on this machine."""
    layer = fff_layers(fff)[0]
    bc = BenchConfig(device=device.split(":")[0], dtype="bfloat16" if "cuda" in device else "float32",
                     tokens=[batch * seq_len], repeats=10, model=False, hidden=layer.hidden_size,
                     ffn=fff.config.fff["dense_ffn_width"], depth=layer.depth, leaf_width=layer.leaf_width)
    dtype = DTYPES[bc.dtype]
    d, f = copy.deepcopy(dense).to(device, dtype).eval(), copy.deepcopy(fff).to(device, dtype).eval()
    t = time_models(d, f, random_ids(dense.config.vocab_size, batch, seq_len, device), bc)
    return {"dtype": bc.dtype, "tokens": batch * seq_len, "ffn_layer_speedup": bench_layer(bc)[0]["speedup_kernel"],
            "model_speedup": t["speedup"], "model_speedup_graph": t.get("speedup_graph"), "model": t}


def retention(fff: float, dense: float) -> str:
    """The student's share of the teacher's score; none for a teacher at or below zero (an MCC or a
    correlation of a constant predictor), against which a share means nothing."""
    return f"{100 * fff / dense:.1f}%" if dense > 0 else "n/a (teacher <= 0)"


def score_cells(scores: dict, dense: dict, keys: list[str]) -> str:
    """A student's table cells: each dev split's score and its retention."""
    return "".join(f"{scores[k]:.2f} | {retention(scores[k], dense[k])} | " for k in keys)


def write_reports(results: dict, out: Path):
    write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True))
    task, dense = results["task"], results["dense"]
    head = TASKS[task].metrics[0]
    keys = [k for k in dense if k.endswith(head)]  # one per dev split (MNLI has two)
    key = keys[0]
    t = results.get("teacher") or {}
    lines = [f"# GLUE {task}: dense vs FFF ({results['model']})", "",
             f"Dense teacher dev {key}: **{dense[key]:.2f}**" + (f" (learning rate {t['lr']:g}, step {t['step']}, chosen on "
             f"a held-out split of train: {t['heldout']:.2f}; always the majority class: {t['chance']:.2f}, and chance "
             f"reaches {t['chance'] + t['chance_margin']:.2f} on that split)" if t else "")
             + f". Machine: {results['machine']}.", ""]
    if t.get("near_chance"):
        lines += ["**The teacher is near chance on the held-out split: retention against it means little.**", ""]
    scores = "".join(f"FFF dev {k} | retention | " for k in keys)
    lines += ["| student | neurons per token | " + scores + "hard/soft agreement | distill steps (best) "
              "| FFN layer speedup | model speedup | seconds |", "|---|---:|" + "---:|---:|" * len(keys) + "---:|---:|---:|---:|---:|"]
    for r in results["fff"]:
        s = r.get("speed")
        speed = f"{s['ffn_layer_speedup']:.1f}x | {s['model_speedup']:.2f}x" if s else "not measured | not measured"
        lines.append(f"| {r['name']} | {r['rows_per_token']:.1f} of {results['dense_ffn_width']} | "
                     f"{score_cells(r['fff'], dense, keys)}{r['agreement']:.3f} "
                     f"| {r['distill']['steps']} ({r['distill']['best_step']}) | {speed} | {r['seconds']:.0f} |")
        if "fff_int8" in r:
            lines.append(f"| {r['name']} + int8 Linears (CPU) | | {score_cells(r['fff_int8'], dense, keys)}| | | | |")
    if t.get("tried"):
        lines += ["", f"Teacher finetuning: {sum(r['seconds'] for r in t['tried']):.0f} s "
                      f"({len(t['tried'])} learning rates, {t['steps_per_run']} steps each)."]
    lines += ["", f"All dense metrics: {json.dumps({k: round(v, 2) for k, v in dense.items()})}",
              f"This command's wall time (a --resume run counts only its own): {results['seconds_total']:.0f} s. "
              f"Command: `{results['command']}`"]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    if len(results["fff"]) > 1:
        plot_sweep(results, key, out / "sweep.png")


def plot_sweep(results, key, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs = [r["rows_per_token"] for r in results["fff"]]
    ax.plot(xs, [r["fff"][key] for r in results["fff"]], "o-", label="FFF (hard routing)")
    for x, r in zip(xs, results["fff"]):
        ax.annotate(r["name"], (x, r["fff"][key]), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.axhline(results["dense"][key], color="gray", ls="--", label=f"dense ({results['dense_ffn_width']} neurons)")
    ax.set_xlabel("FFN neurons per token (routing + leaf)")
    ax.set_ylabel(f"dev {key}")
    ax.set_title(f"GLUE {results['task']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


@click.command()
@click.option("--task", type=click.Choice(sorted(TASKS)), required=True)
@click.option("--model", "source", type=NonEmptyName(), default=None, help="Local folder or hub name. Default: embedded all-MiniLM-L6-v2.")
@click.option("--general", "generals", multiple=True, type=NonEmptyPath(file_okay=False, exists=True),
              help="A general FFF model of MODEL (`fffconvert MODEL ...`); repeat for a sweep. Default: made here.")
@click.option("--depth", default="8", show_default=True, help="Depth(s) of the general models made here (comma-separated: a sweep).")
@click.option("--data-dir", type=NonEmptyPath(file_okay=False), default=None,
              help="Folder in the GLUE TSV layout. Default: the hub, through `datasets`.")
@click.option("--output", type=NonEmptyPath(file_okay=False), required=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--max-train", type=click.IntRange(min=4), default=None, help="Use only the first N training rows (quick runs).")
@click.option("--max-dev", type=click.IntRange(min=1), default=None, help="Use only the first N rows of each dev split.")
@click.option("--max-length", type=click.IntRange(min=8, max=512), default=128, show_default=True)
@click.option("--general-steps", type=click.IntRange(min=0), default=None,
              help="End-to-end steps of the general models made here. Default: fffconvert's.")
@click.option("--max-distill-steps", type=click.IntRange(min=1), default=rules.DISTILL_STEPS, show_default=True,
              help="At most this many task distillation steps (held-out scores stop it earlier).")
@click.option("--hidden-weight", type=FiniteFloat(min=0), default=rules.TASK_HIDDEN_WEIGHT, show_default=True,
              help="Weight of every layer's hidden states in the task distillation's loss (beside the logits').")
@click.option("--soft-frac", type=FiniteFloat(min=0, max=1), default=rules.TASK_SOFT_FRAC, show_default=True,
              help="Share of the task distillation's steps with soft routing, where the routing learns too (0: frozen).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the checkpoints under --output (and take its teacher).")
@click.option("--teacher-only", is_flag=True, help="Finetune and score the teacher, then stop; --resume takes it later.")
@click.option("--no-speed", is_flag=True, help="Skip the speed measurement.")
@click.option("--int8", is_flag=True, help="Also score the student with its remaining Linear layers in int8 (CPU).")
@click.option("--seed", type=SEED, default=0, show_default=True)
def main(task, source, generals, depth, data_dir, output, device, **kw):
    """Finetune (or take) a teacher, distill an FFF student in two stages, score both; write results."""
    args = SimpleNamespace(**kw)
    one_line_warnings()
    try:
        depths = [int(d) for d in depth.split(",")]
        if any(d < 1 for d in depths):
            raise ValueError
    except ValueError:
        click.echo(f"Error: --depth must be integers >= 1, got {depth!r}", err=True)
        sys.exit(2)
    try:
        if args.teacher_only and generals:
            raise UserError("--general has no use with --teacher-only (the student is made by a later --resume run)")
        run(task, source, list(generals), depths, data_dir, Path(output), device, args)
    except (DataError, UserError) as e:
        refuse(e)


def refuse(e: Exception):
    """A user's mistake: one `Error:` line and exit status 2 (FFFCONVERT_DEBUG=1: the traceback)."""
    if os.environ.get("FFFCONVERT_DEBUG"):
        raise e
    click.echo(f"Error: {e}", err=True)
    sys.exit(2)


def read_train(task: str, data_dir, max_rows=None) -> list[tuple]:
    """The task's training rows (the first max_rows), refused when too few to split."""
    train = load_split(task, "train", data_dir)[:max_rows]
    if len(train) < 4:
        raise DataError(f"{task} train has {len(train)} rows: too few to hold some out and learn from the rest")
    return train


def run(task, source, generals, depths, data_dir, out: Path, device, args):
    t0 = time.perf_counter()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU")
    source = source or str(embedded_model_path())
    train = read_train(task, data_dir, args.max_train)  # every input is read before any work
    dev = {split: load_split(task, split, data_dir)[: args.max_dev] for split in TASKS[task].dev}
    for g in generals:
        check_converted_config(read_config(Path(g)), g)
    check_writable(out)
    device = init_distributed(device)
    torch.backends.cuda.matmul.allow_tf32 = True  # as HF Trainer's tf32=True: training's matmuls on tensor cores
    rank, world = rank_and_world()
    out.mkdir(parents=True, exist_ok=True)
    regression = TASKS[task].num_labels == 1
    learn, heldout = rules.split_heldout(train, args.seed, classification=not regression)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    collate = Collate(tokenizer, regression, args.max_length)
    collate.encode(learn + heldout + [r for rows in dev.values() for r in rows])
    teacher, teacher_report = teacher_model(source, task, learn, heldout, collate, args, device, out)
    results = {"task": task, "model": source, "world_size": world, "command": " ".join(["python", *sys.argv]),
               "machine": torch.cuda.get_device_name() if "cuda" in device else f"CPU, {torch.get_num_threads()} threads",
               "split": {"learn": len(learn), "heldout": len(heldout)}, "teacher": teacher_report,
               "dense": evaluate(teacher, task, dev, collate, device), "fff": [],
               "dense_ffn_width": getattr(teacher.config, "intermediate_size", None) or getattr(teacher.config, "hidden_dim", None)}
    results["seconds_total"] = time.perf_counter() - t0
    if rank == 0:  # the teacher's scores are kept even if a later stage is stopped
        write_reports(results, out)
    if args.teacher_only:
        return
    paths = [(Path(g).name, Path(g)) for g in generals] or [(f"d{d}", general_model(args, d, source, learn, device, out))
                                                              for d in depths]
    for name, path in paths:
        student = student_model(path, teacher, task, device)
        row = distill_on_task(student, teacher, name, task, learn, heldout, dev, collate, args, device, out)
        if not args.no_speed and rank == 0:
            batch, seq = (64, 128) if "cuda" in device else (8, 128)
            row["speed"] = measure_speed(teacher, student, device, batch, seq)
        results["fff"].append(row)
        results["seconds_total"] = time.perf_counter() - t0
        if rank == 0:
            write_reports(results, out)
            click.echo((out / "results.md").read_text())


if __name__ == "__main__":
    main()
