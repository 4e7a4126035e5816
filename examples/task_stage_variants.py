"""Variants of the GLUE recipe's task stage on one task, from one teacher and one general model.

    python examples/task_stage_variants.py VARIANT TASK DATA TEACHER GENERAL MODEL OUT

TEACHER: the recipe's dense/ folder (`recipes/glue.py ... --teacher-only`); GENERAL: `fffconvert MODEL`'s
output; MODEL: the dense source. Writes OUT/result.json (dev and held-out scores) and prints one line.

VARIANT: "default" (the recipe's task stage as it is), "frozen" (the routing frozen throughout:
--soft-frac 0), "soft25" (soft for a quarter of the steps), "dense" (the dense MODEL as the student:
what the task stage reaches without FFF layers), "adapt" (the general model first distilled again
against MODEL on the task's own text and its augmented copies, 1000 steps of 256, soft then hard;
then the default task stage), "fff-lr-2e-3" (the FFF layers' learning rate 2e-3, as in `convert`'s
end-to-end phase, instead of glue_rules.TASK_FFF_LR), "lr-3e-4" (everything's learning rate three
times the default's), "average" (the weights' moving average over EVAL_EVERY steps is scored and
kept: glue_rules.TASK_AVERAGE_STEPS). docs/results/acceptability/ holds what they gave.
"""
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import glue  # noqa: E402
import glue_rules as rules  # noqa: E402
from batches import Collate  # noqa: E402
from glue_tasks import TASKS, load_split  # noqa: E402

import fffconvert  # noqa: E402
from fffconvert.e2e import E2EConfig, distill_model, text_collate  # noqa: E402
from fffconvert.sources import load_dense  # noqa: E402

SOFT_FRAC = {"default": rules.TASK_SOFT_FRAC, "adapt": rules.TASK_SOFT_FRAC, "frozen": 0.0, "soft25": 0.25,
             "fff-lr-2e-3": rules.TASK_SOFT_FRAC, "lr-3e-4": rules.TASK_SOFT_FRAC, "average": rules.TASK_SOFT_FRAC}
RATES = {"fff-lr-2e-3": (rules.TASK_LR, 2e-3), "lr-3e-4": (3 * rules.TASK_LR, 3 * rules.TASK_FFF_LR)}


def adapted(general: str, source: str, tok, learn, device, out: Path) -> Path:
    """The general model distilled again against its dense source on the task's text (as `convert`'s end-to-end phase)."""
    model = fffconvert.from_pretrained(general).to(device)
    src = load_dense(source)
    texts = [" ".join(r[:-1]) for r in glue.transfer_rows(learn, seed=0)]
    ids = tok(texts, truncation=True, max_length=128)["input_ids"]
    distill_model(model, src.model, ids, text_collate(tok.pad_token_id), E2EConfig(steps=1000), device=device,
                  pooling=src.pooling)
    fffconvert.save_pretrained(model.cpu(), out / "adapted-general", tok, overwrite=True, extra_files=src.extra_files)
    return out / "adapted-general"


def dense_student(source: str, teacher, task, learn, heldout, dev, collate, args, device) -> dict:
    """The dense source with the teacher's head, through the recipe's task stage (no routing to learn)."""
    student = glue.student_model(Path(source), teacher, task, device)
    stats = distill_model(student, teacher, glue.transfer_rows(learn, args.seed), collate, glue.task_config(args),
                          device=device, seed=args.seed,
                          evaluate=lambda m: glue.headline(task, glue.evaluate(m, task, {"heldout": heldout}, collate, device)),
                          eval_every=rules.EVAL_EVERY, patience=rules.PATIENCE)
    return {"fff": glue.evaluate(student, task, dev, collate, device),
            "distill": {k: stats[k] for k in ("steps", "best_step", "best_score", "evaluations")}}


def main(variant, task, data, teacher_dir, general, source, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    rules.TASK_LR, rules.TASK_FFF_LR = RATES.get(variant, (rules.TASK_LR, rules.TASK_FFF_LR))  # read by glue.task_config
    if variant == "average":
        rules.TASK_AVERAGE_STEPS = rules.EVAL_EVERY
    train = load_split(task, "train", data)
    dev = {s: load_split(task, s, data) for s in TASKS[task].dev}
    regression = TASKS[task].num_labels == 1
    learn, heldout = rules.split_heldout(train, 0, classification=not regression)
    tok = transformers.AutoTokenizer.from_pretrained(source)
    collate = Collate(tok, regression, 128)
    teacher = transformers.AutoModelForSequenceClassification.from_pretrained(teacher_dir, dtype=torch.float32).to(device)
    result = {"variant": variant, "teacher_dev": glue.evaluate(teacher, task, dev, collate, device),
              "teacher_heldout": glue.evaluate(teacher, task, {"heldout": heldout}, collate, device)}
    args = SimpleNamespace(max_distill_steps=rules.DISTILL_STEPS, hidden_weight=rules.TASK_HIDDEN_WEIGHT,
                           soft_frac=SOFT_FRAC.get(variant, 0.0), checkpoint_every=500, resume=False, seed=0, int8=False)
    if variant == "dense":
        result["row"] = dense_student(source, teacher, task, learn, heldout, dev, collate, args, device)
    else:
        if variant == "adapt":
            general = adapted(general, source, tok, learn, device, out)
        student = glue.student_model(Path(general), teacher, task, device)
        result["row"] = glue.distill_on_task(student, teacher, variant, task, learn, heldout, dev, collate, args, device, out)
    result["seconds"] = time.perf_counter() - t0
    (out / "result.json").write_text(json.dumps(result, indent=2))
    r = result["row"]
    print(f"{variant}: dev {r['fff']}, best held-out {r['distill']['best_score']:.2f} at step {r['distill']['best_step']}; "
          f"teacher dev {result['teacher_dev']}, held-out {result['teacher_heldout']}; {result['seconds']:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) != 8 or sys.argv[1] not in [*SOFT_FRAC, "dense"]:
        sys.exit(__doc__)
    main(*sys.argv[1:])
