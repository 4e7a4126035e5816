"""recipes/teacher_curves.py: curves of the recipe's own teacher finetuning; rules compared on them."""
import json
import random
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import teacher_curves  # noqa: E402


def tiny_sst2(root: Path, seed=0):
    rng = random.Random(seed)
    words = "good bad fine awful great dull bright grim".split()
    (root / "SST-2").mkdir(parents=True)
    for split, n in (("train", 24), ("dev", 8)):
        rows = [f"{' '.join(rng.choices(words, k=5))}\t{i % 2}" for i in range(n)]
        (root / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")


def test_record_follows_the_recipes_teacher_and_compare_reads_it(tmp_path, minilm_path):
    tiny_sst2(tmp_path / "glue")
    out = tmp_path / "curves.json"
    args = ["record", "--task", "sst2", "--model", str(minilm_path), "--data-dir", str(tmp_path / "glue"), "--output", str(out)]
    r = CliRunner().invoke(teacher_curves.main, args)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["heldout_size"] == 12 and data["steps"] == 10 and [run["lr"] for run in data["runs"]] == [2e-5, 5e-5, 1e-4]
    for run in data["runs"]:  # one evaluation per step here (held-out and dev, both accuracies in percent)
        assert len(run["curve"]) == 10 and all(0 <= v <= 100 for pair in run["curve"] for v in pair)
    r = CliRunner().invoke(teacher_curves.main, ["compare", str(out)])
    assert r.exit_code == 0 and "| sst2 seed 0 (rates 2e-05, 5e-05, 0.0001) |" in r.output and "mean of 1" in r.output, r.output


def test_rules_pick_by_held_out_only():
    # held-out peaks alone at evaluation 2 (dev 80); its mean over 3 is best at evaluation 6 (dev 88)
    runs = [{"lr": 1e-4, "curve": [[70, 70], [90, 80], [60, 70], [80, 85], [85, 90], [84, 88]]},
            {"lr": 2e-5, "curve": [[50, 99], [60, 99]]}]
    assert teacher_curves.pick(runs, 1) == 80 and teacher_curves.pick(runs, 3) == 88
    assert teacher_curves.trailing_mean([1, 2, 3], 2) == [1, 1.5, 2.5]


def test_bad_input_is_one_line_and_status_2(tmp_path, minilm_path):
    (tmp_path / "not-curves.json").write_text('{"runs": [{"lr": 1e-4, "curve": [[1, 2, 3]]}], "task": "x", "seed": 0}')
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "glue").mkdir()
    cases = [(["compare", str(tmp_path / "not-curves.json")], "is not a file `record` wrote"),
             (["compare", str(tmp_path / "broken.json")], "is not a file `record` wrote"),
             (["compare", "--windows", "0", str(tmp_path / "broken.json")], "--windows must be integers >= 1"),
             (["record", "--task", "sst2", "--model", str(minilm_path), "--data-dir", str(tmp_path / "glue"),
               "--output", str(tmp_path / "c.json")], "SST-2"),
             (["record", "--task", "sst2", "--model", str(minilm_path), "--data-dir", str(tmp_path / "tiny"),
               "--output", str(tmp_path / "nowhere" / "c.json")], "its folder does not exist")]
    tiny_sst2(tmp_path / "tiny")
    for args, message in cases:
        r = CliRunner().invoke(teacher_curves.main, args)
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (args, r.output)
    assert not (tmp_path / "c.json").exists()
