"""The GLUE recipe: reading the TSV layout, the metrics, and a tiny end-to-end run."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from augment import augment  # noqa: E402
from glue_tasks import TASKS, DataError, load_split, read_tsv, score  # noqa: E402

GLUE = Path(__file__).resolve().parents[2] / "shared" / "glue"
needs_glue = pytest.mark.skipif(not GLUE.exists(), reason=f"GLUE data not found at {GLUE} (see README: Data)")


def test_all_nine_tasks_with_their_standard_metrics():
    assert {t: TASKS[t].metrics for t in TASKS} == {
        "cola": ("matthews",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"), "qqp": ("f1", "accuracy"),
        "stsb": ("pearson", "spearman"), "mnli": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",),
        "wnli": ("accuracy",)}
    assert TASKS["stsb"].num_labels == 1 and TASKS["mnli"].dev == ("dev_matched", "dev_mismatched")


@needs_glue
@pytest.mark.parametrize("task,split,rows,example", [
    ("sst2", "train", 67349, ("hide new secretions from the parental units ", 0)),
    ("sst2", "dev", 872, None),
    ("mrpc", "train", 3667, None),  # one fewer than the official 3668 (fff-notes, section 7)
    ("mrpc", "dev", 408, None),
    ("stsb", "train", 5749, ("A plane is taking off.", "An air plane is taking off.", 5.0)),
    ("stsb", "dev", 1500, None),
])
def test_reads_the_shared_glue_files(task, split, rows, example):
    data = load_split(task, split, GLUE)
    assert len(data) == rows
    if example:
        assert data[0] == example
    n_texts = len(TASKS[task].text)
    assert all(len(r) == n_texts + 1 for r in data)


@needs_glue
def test_mrpc_byte_order_mark_is_handled():
    first = load_split("mrpc", "train", GLUE)[0]
    assert first[-1] in (0, 1) and first[0].startswith("Amrozi")


def test_malformed_files_name_the_file_and_line(tmp_path):
    (tmp_path / "SST-2").mkdir()
    bad = tmp_path / "SST-2" / "train.tsv"
    bad.write_text("sentence\tlabel\ngood one\t1\nno label here\n")
    with pytest.raises(DataError, match=r"train.tsv, line 3: 1 columns"):
        read_tsv(bad, TASKS["sst2"])
    bad.write_text("sentence\tlabel\nfine\tseven\n")
    with pytest.raises(DataError, match=r"line 2: bad label 'seven'"):
        load_split("sst2", "train", tmp_path)
    (tmp_path / "STS-B").mkdir()
    (tmp_path / "STS-B" / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t2.5\nc\td\tnan\n")
    with pytest.raises(DataError, match=r"line 3: bad label 'nan'"):
        load_split("stsb", "dev", tmp_path)
    bad.write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(DataError, match=r"line 1: header lacks column"):
        load_split("sst2", "train", tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_split("mrpc", "train", tmp_path)


# Each task's files as the GLUE download writes them (header, columns, label form), one row each.
LAYOUTS = {
    "cola": ("train.tsv", None, "gj04\t1\t\tOur friends won't buy this analysis.", ("Our friends won't buy this analysis.", 1)),
    "qqp": ("train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
            "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of math is needed?\t0",
            ("How is the life of a math student?", "Which level of math is needed?", 0)),
    "mnli": ("dev_mismatched.tsv", "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse"
             "\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
             "0\t75290\t75290c\tletters\t( ( Your gift ) )\t( ( Your contribution ) )\t(ROOT)\t(ROOT)"
             "\tYour gift is appreciated.\tHundreds will benefit.\tneutral\tneutral\tneutral\tneutral\tneutral\tneutral",
             ("Your gift is appreciated.", "Hundreds will benefit.", 1)),
    "qnli": ("dev.tsv", "index\tquestion\tsentence\tlabel", "0\tWhat came into force?\tThe law did.\tnot_entailment",
             ("What came into force?", "The law did.", 1)),
    "rte": ("train.tsv", "index\tsentence1\tsentence2\tlabel", '0\tNo "weapons" were found.\tWeapons were found.\tnot_entailment',
            ('No "weapons" were found.', "Weapons were found.", 1)),
    "wnli": ("train.tsv", "index\tsentence1\tsentence2\tlabel", "0\tI stuck a pin through a carrot.\tThe carrot has a hole.\t1",
             ("I stuck a pin through a carrot.", "The carrot has a hole.", 1)),
}


@pytest.mark.parametrize("task", sorted(LAYOUTS))
def test_tasks_not_in_the_shared_data_read_their_glue_layout(task, tmp_path):
    name, header, row, expected = LAYOUTS[task]
    (tmp_path / TASKS[task].folder).mkdir()
    (tmp_path / TASKS[task].folder / name).write_text("\n".join(filter(None, [header, row, row])) + "\n")
    assert load_split(task, name.removesuffix(".tsv"), tmp_path) == [expected, expected]


def test_a_few_lines_broken_by_a_newline_are_left_out_with_a_warning(tmp_path):
    from glue_tasks import DataWarning

    (tmp_path / "QQP").mkdir()
    good = [f"{i}\t{2 * i}\t{2 * i + 1}\tQuestion {i}?\tOther question {i}?\t{i % 2}" for i in range(2000)]
    broken = ["5000\t1\t2\tA question cut", "in two by a newline?\tThe other one?\t0"]  # as in QQP's train.tsv
    path = tmp_path / "QQP" / "train.tsv"
    path.write_text("\n".join([LAYOUTS["qqp"][1], *good[:700], *broken, *good[700:]]) + "\n")
    with pytest.warns(DataWarning, match=r"train.tsv: left out 2 broken line\(s\) of too few columns \(702, 703\)"):
        rows = load_split("qqp", "train", tmp_path)
    assert len(rows) == 2000 and rows[700] == ("Question 700?", "Other question 700?", 0)
    path.write_text("\n".join([LAYOUTS["qqp"][1], *good[:10], *broken]) + "\n")  # more than 1 in 1000: not QQP's quirk
    with pytest.raises(DataError, match=r"line 12: 4 columns, expected at least 6"):
        load_split("qqp", "train", tmp_path)


def test_the_recipe_says_what_it_left_out_and_refuses_a_general_model_without_config(tmp_path, minilm_path):
    import subprocess

    (tmp_path / "QQP").mkdir()
    rows = [f"{i}\t{2 * i}\t{2 * i + 1}\tQuestion {i}?\tOther question {i}?\t{i % 2}" for i in range(1500)]
    (tmp_path / "QQP" / "train.tsv").write_text("\n".join([LAYOUTS["qqp"][1], "9\t1\t2\tcut", *rows]) + "\n")
    (tmp_path / "QQP" / "dev.tsv").write_text("\n".join([LAYOUTS["qqp"][1], *rows[:20]]) + "\n")
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "recipes" / "glue.py"), "--task", "qqp",
                        "--model", str(minilm_path), "--data-dir", str(tmp_path), "--output", str(tmp_path / "out"),
                        "--general", str(tmp_path / "empty"), "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"Warning: {tmp_path}/QQP/train.tsv: left out 1 broken line(s) of too few columns (2)",
        f"Error: {tmp_path}/empty has no config.json: not a transformers model folder"]
    assert not (tmp_path / "out").exists()


def test_report_gives_every_dev_split_and_no_share_of_a_teacher_at_zero(tmp_path):
    from glue import write_reports

    def results(task, dense, fff):
        return {"task": task, "dense": dense, "teacher": {}, "model": "m", "machine": "CPU", "dense_ffn_width": 1536,
                "seconds_total": 1.0, "command": "c", "fff": [{"name": "d8", "rows_per_token": 14.0, "fff": fff,
                                                               "agreement": 1.0, "distill": {"steps": 3, "best_step": 3},
                                                               "seconds": 1.0}]}

    write_reports(results("mnli", {"dev_matched_accuracy": 80.0, "dev_mismatched_accuracy": 81.0},
                          {"dev_matched_accuracy": 79.2, "dev_mismatched_accuracy": 79.38}), tmp_path)
    row = (tmp_path / "results.md").read_text().splitlines()
    assert "| d8 | 14.0 of 1536 | 79.20 | 99.0% | 79.38 | 98.0% |" in "\n".join(row)
    write_reports(results("cola", {"matthews": 0.0}, {"matthews": 0.0}), tmp_path)  # a teacher that predicts one class
    assert "| 0.00 | n/a (teacher <= 0) |" in (tmp_path / "results.md").read_text()


def test_augmented_copies_are_perturbed_pairs_of_the_task_text():
    rows = [(f"first text number {i} here", f"second text number {i} there", float(i)) for i in range(40)]
    out = augment(rows, 2, seed=1)
    assert len(out) == 80 and out == augment(rows, 2, seed=1)
    assert all(len(r) == 3 and r[2] == rows[i % 40][2] for i, r in enumerate(out))
    vocab = {w for r in rows for t in r[:2] for w in t.split()}
    assert all(set(t.split()) <= vocab for r in out for t in r[:2])
    changed = sum(r[:2] != rows[i % 40][:2] for i, r in enumerate(out))
    swapped = sum(r[1].split()[3:4] != rows[i % 40][1].split()[3:4] for i, r in enumerate(out))
    assert changed > 60 and 5 < swapped < 50  # most copies differ; about a quarter of the pairs are re-paired


def test_scores_come_from_the_libraries():
    assert score("sst2", [1, 0, 1, 1], [1, 0, 0, 1]) == {"accuracy": 75.0}
    mrpc = score("mrpc", [1, 0, 1, 1], [1, 0, 0, 1])
    assert mrpc["f1"] == pytest.approx(80.0) and mrpc["accuracy"] == 75.0
    stsb = score("stsb", [0.1, 2.0, 3.9, 5.0], [0.0, 2.2, 3.0, 4.8])
    assert 95 < stsb["pearson"] < 100 and stsb["spearman"] == pytest.approx(100.0)
    assert score("cola", [1, 0, 1, 0], [1, 0, 1, 0]) == {"matthews": 100.0}


def test_heldout_split_is_seeded_stratified_and_disjoint():
    from glue_rules import split_heldout

    rows = [(f"text {i}", int(i % 10 == 0)) for i in range(3000)]
    learn, held = split_heldout(rows, seed=1, classification=True)
    assert len(held) == 300 and len(learn) + len(held) == 3000 and not set(learn) & set(held)
    assert sum(r[1] for r in held) == 30  # the rare label keeps its share
    assert split_heldout(rows, seed=1, classification=True) == (learn, held)
    assert split_heldout(rows, seed=2, classification=True)[1] != held
    assert len(split_heldout(rows[:100], 0, False)[1]) == 50  # never more than half


def test_rules_follow_the_size_of_the_training_data():
    from glue_rules import augment_copies, chance_margin, chance_score, finetune_plan

    assert finetune_plan(2500) == ([2e-5, 5e-5, 1e-4], 10, 32) and finetune_plan(19999)[2] == 32
    assert finetune_plan(60000) == ([1e-4], 5, 128) and finetune_plan(390000) == ([1e-4], 3, 128)
    assert augment_copies(3000) == 8 and augment_copies(30000) == 3 and augment_copies(200000) == 0
    held = [("a", 1), ("b", 1), ("c", 0), ("d", 1)]
    assert chance_score("sst2", held, "accuracy") == 75.0 and chance_score("cola", held, "matthews") == 0.0
    # near chance: two standard errors of a chance-level score on the held-out rows, at least 2 points
    assert chance_margin(52.7, "accuracy", 249) == pytest.approx(6.33, abs=0.01)  # 54.9% on a small task is chance
    assert chance_margin(55.8, "accuracy", 2000) == pytest.approx(2.22, abs=0.01)
    assert chance_margin(0.0, "matthews", 855) == pytest.approx(6.84, abs=0.01)
    assert chance_margin(50.0, "accuracy", 100_000) == 2.0


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("side", ["right", "left"])
def test_batches_equal_tokenizing_each_batch(tokenizer, texts, pairs, side):
    import copy

    import torch
    from batches import Collate

    tok = copy.deepcopy(tokenizer)
    tok.padding_side = side
    long = " ".join(texts[:40])  # over max_length: truncated (for pairs, the longest first)
    firsts = texts[:37] + [long, "", texts[3]]
    rows = [((a, texts[-1 - i]) if pairs else (a,)) + (i % 3,) for i, a in enumerate(firsts)]
    rows.append(rows[5])  # a repeated row is encoded once
    collate = Collate(tok, regression=False, max_length=24)
    collate.encode(rows[:20])
    for batch in (rows[:1], rows[:7], rows[30:], rows[::3]):
        want = tok(*[list(c) for c in zip(*[r[:-1] for r in batch])], padding=True, truncation=True, max_length=24,
                   return_tensors="pt")
        got = collate(batch)
        assert set(got) == set(want) | {"labels"}
        for k in want:
            assert torch.equal(got[k], want[k]), k
        assert got["labels"].tolist() == [r[-1] for r in batch] and got["labels"].dtype == torch.long
    assert len(collate.cache) == len({r[:-1] for r in rows[:20] + rows[:7] + rows[30:] + rows[::3]})
    assert torch.equal(collate([list(r) for r in rows[:3]])["input_ids"], collate(rows[:3])["input_ids"])
    assert Collate(tok, regression=True, max_length=24)(rows[:2])["labels"].dtype == torch.float32


@pytest.fixture(scope="module")
def general_dir(tmp_path_factory, minilm_path, tokenizer, texts):
    """A general FFF model of the embedded MiniLM, made small (depth 2, a few steps)."""
    import fffconvert
    from fffconvert.convert import FFFConfig
    from fffconvert.distill import DistillConfig
    from fffconvert.e2e import E2EConfig
    from fffconvert.sources import load_dense

    src = load_dense(str(minilm_path))
    cfg = FFFConfig(depth=2, calib_tokens=1500, distill=DistillConfig(steps=2), e2e=E2EConfig(steps=2, batch_size=4))
    model = fffconvert.convert(src.model, cfg, texts[:200], tokenizer, progress=False, pooling=src.pooling)
    out = tmp_path_factory.mktemp("general") / "general-d2"
    fffconvert.save_pretrained(model, out, tokenizer, extra_files=src.extra_files)
    return out


def recipe_args(out, minilm_path, general_dir):
    return ["--task", "mrpc", "--model", str(minilm_path), "--data-dir", str(GLUE), "--output", str(out),
            "--device", "cpu", "--general", str(general_dir), "--max-train", "40", "--max-dev", "16",
            "--max-distill-steps", "3", "--checkpoint-every", "2", "--no-speed"]


@needs_glue
def test_tiny_recipe_run_end_to_end_and_reproducible(tmp_path, minilm_path, general_dir):
    from click.testing import CliRunner

    import glue

    r = CliRunner().invoke(glue.main, recipe_args(tmp_path / "a", minilm_path, general_dir))
    assert r.exit_code == 0, r.output
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["split"] == {"learn": 20, "heldout": 20}
    assert [t["lr"] for t in results["teacher"]["tried"]] == [2e-5, 5e-5, 1e-4] and "near_chance" in results["teacher"]
    row = results["fff"][0]
    assert row["name"] == "general-d2" and row["depths"] == [2] and row["distill"]["steps"] == 3
    assert {"f1", "accuracy"} <= results["dense"].keys() and {"f1", "accuracy"} <= row["fff"].keys()
    assert "retention" in (tmp_path / "a" / "results.md").read_text()
    import fffconvert

    model = fffconvert.from_pretrained(tmp_path / "a" / "fff-general-d2")
    assert type(model).__name__ == "FFFBertForSequenceClassification"
    r = CliRunner().invoke(glue.main, recipe_args(tmp_path / "b", minilm_path, general_dir) + ["--int8"])  # same seed
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert again["dense"] == results["dense"] and again["fff"][0]["fff"] == row["fff"]
    assert {"f1", "accuracy"} <= again["fff"][0]["fff_int8"].keys() and "int8" in (tmp_path / "b" / "results.md").read_text()
    # in two runs: the teacher alone, then the student from it (--resume), as in one run
    args = recipe_args(tmp_path / "c", minilm_path, general_dir)
    general = args.index("--general")
    r = CliRunner().invoke(glue.main, args[:general] + args[general + 2:] + ["--teacher-only"])
    assert r.exit_code == 0, r.output
    first = json.loads((tmp_path / "c" / "results.json").read_text())
    assert first["dense"] == results["dense"] and first["fff"] == [] and not (tmp_path / "c" / "fff-general-d2").exists()
    r = CliRunner().invoke(glue.main, args + ["--resume"])
    assert r.exit_code == 0, r.output
    later = json.loads((tmp_path / "c" / "results.json").read_text())

    def untimed(teacher):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in teacher["tried"]]

    assert untimed(later["teacher"]) == untimed(results["teacher"]) and later["fff"][0]["fff"] == row["fff"]
    assert "Teacher finetuning" in (tmp_path / "c" / "results.md").read_text()
    # the routing learns the task's text in the soft steps (the default); --soft-frac 0 keeps the general model's
    shutil.copytree(tmp_path / "c" / "dense", tmp_path / "d" / "dense")
    r = CliRunner().invoke(glue.main, recipe_args(tmp_path / "d", minilm_path, general_dir) + ["--resume", "--soft-frac", "0"])
    assert r.exit_code == 0, r.output
    from fffconvert.surgery import fff_layers

    def routing(path):
        return [layer.node_weight.detach().clone() for layer in fff_layers(fffconvert.from_pretrained(path))]

    general = routing(general_dir)
    assert any(not torch.equal(a, b) for a, b in zip(routing(tmp_path / "a" / "fff-general-d2"), general))
    assert all(torch.equal(a, b) for a, b in zip(routing(tmp_path / "d" / "fff-general-d2"), general))


@needs_glue
@pytest.mark.parametrize("change,message", [
    (["--depth", "0"], "--depth must be integers >= 1"),
    (["--checkpoint-every", "0"], "'--checkpoint-every'"),
    (["--hidden-weight", "-1"], "'--hidden-weight'"),
    (["--hidden-weight", "x"], "'--hidden-weight'"),
    (["--soft-frac", "1.5"], "'--soft-frac'"),
    (["--soft-frac", "nan"], "nan is not a finite number"),
    (["--seed", "-1"], "'--seed'"),
    (["--data-dir", "/nowhere"], "no such file"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--model", ""], "'--model': is empty"),
    (["--output", " "], "'--output': is empty"),
    (["--teacher-only", None], "--general has no use with --teacher-only"),
])
def test_recipe_refuses_before_any_work(change, message, tmp_path, minilm_path, general_dir):
    from click.testing import CliRunner

    import glue

    if "cuda" in change and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = recipe_args(tmp_path / "out", minilm_path, general_dir)
    for opt, value in zip(change[::2], change[1::2]):
        if value is None:  # a flag
            args = args + [opt]
        else:
            args = args[: args.index(opt)] + [opt, value] + args[args.index(opt) + 2:] if opt in args else args + [opt, value]
    r = CliRunner().invoke(glue.main, args)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_recipe_refuses_an_empty_train_file(tmp_path, minilm_path, general_dir):
    from click.testing import CliRunner

    import glue

    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("")
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    args = ["--task", "sst2", "--model", str(minilm_path), "--data-dir", str(tmp_path), "--output", str(tmp_path / "o"),
            "--device", "cpu", "--general", str(general_dir)]
    r = CliRunner().invoke(glue.main, args)
    assert r.exit_code == 2 and "train.tsv: no rows" in r.output, r.output
