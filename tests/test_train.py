"""The training loop: a resumed run equals an uninterrupted one; end-to-end distillation ends hard."""
import json

import pytest
import torch

from fffconvert.e2e import E2EConfig, distill_model, routing_agreement, soft_routing
from fffconvert.surgery import empty_fff_model, fff_layers
from fffconvert.train import TrainConfig, fit
from conftest import tiny_model

EXAMPLES = [(torch.randint(1000, 2000, (9,)), i % 2) for i in range(40)]


def collate(rows):
    return {"input_ids": torch.stack([r[0] for r in rows]), "labels": torch.tensor([r[1] for r in rows])}


def ce(model, batch, step):
    return model(**batch).loss


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.parametrize("average", [0, 3])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_resumed_run_equals_uninterrupted_run(tmp_path, device, average):
    cfg = TrainConfig(steps=6, batch_size=8, lr=1e-3, checkpoint_every=1, average_steps=average)
    a = tiny_model("bert", "ForSequenceClassification").to(device)
    a.config.hidden_dropout_prob = 0.1
    fit(a, EXAMPLES, collate, ce, cfg, device=device)
    b = tiny_model("bert", "ForSequenceClassification").to(device)
    stats = fit(b, EXAMPLES, collate, ce, cfg, device=device, checkpoint_dir=tmp_path / "ck", stop_after=4)  # "killed" at step 4
    assert stats["steps"] == 4
    c = tiny_model("bert", "ForSequenceClassification", seed=123).to(device)  # a fresh process: other weights
    stats = fit(c, EXAMPLES, collate, ce, cfg, device=device, checkpoint_dir=tmp_path / "ck", resume=True)
    assert stats["steps"] == 2 and len(stats["losses"]) == 6
    sa, sc = a.state_dict(), c.state_dict()
    assert all(torch.allclose(sa[k], sc[k], atol=1e-6) for k in sa)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == sorted(["model.safetensors", "optimizer.safetensors", "state.json"]
                           + ["average.safetensors"] * bool(average))
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["step"] == 6


def test_end_to_end_distillation_ends_with_hard_routing():
    teacher = tiny_model("bert", "ForSequenceClassification")
    student = tiny_model("bert", "ForSequenceClassification")
    empty_fff_model(student, depth=2, leaf_width=8)
    seen = []
    for layer in fff_layers(student):
        layer.register_forward_hook(lambda m, a, o: seen.append(m.soft))
    stats = distill_model(student, teacher, EXAMPLES, collate, E2EConfig(steps=4, batch_size=8, soft_frac=0.5))
    assert all(torch.isfinite(torch.tensor(stats["losses"])))
    assert seen[:2] == [True, True] and seen[-1] is False  # soft phase, then hard
    assert all(not layer.soft and layer.last_hardening is None for layer in fff_layers(student))
    batch = collate(EXAMPLES[:8])
    with torch.no_grad():
        hard = student(input_ids=batch["input_ids"]).logits
        with soft_routing(student):
            soft = student(input_ids=batch["input_ids"]).logits
        again = student(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(again, hard)  # soft_routing restored the hard forward
    assert soft.shape == hard.shape
    assert 0.0 <= routing_agreement(student, [batch]) <= 1.0


def test_averaging_returns_and_scores_the_moving_average_of_the_weights():
    steps, horizon = 5, 3
    model, after = tiny_model("bert", "ForSequenceClassification"), []
    fit(model, EXAMPLES, collate, ce, TrainConfig(steps=steps, batch_size=8, lr=1e-2, dropout=False),
        on_step=lambda step: after.append({k: v.clone() for k, v in model.named_parameters()}))
    after = after[1:] + [dict(model.named_parameters())]  # the weights after each step
    expected = {k: v.detach().clone() for k, v in after[0].items()}  # the average starts at the first step's
    for weights in after[1:]:
        for k in expected:
            expected[k] += (weights[k].detach() - expected[k]) / horizon
    averaged, scored = tiny_model("bert", "ForSequenceClassification"), []
    cfg = TrainConfig(steps=steps, batch_size=8, lr=1e-2, dropout=False, average_steps=horizon)
    fit(averaged, EXAMPLES, collate, ce, cfg, evaluate=lambda m: scored.append(m.classifier.weight.clone()) or 0)
    for k, v in averaged.named_parameters():
        torch.testing.assert_close(v, expected[k])
    torch.testing.assert_close(scored[-1], expected["classifier.weight"])  # the average is what is scored
    assert not torch.allclose(expected["classifier.weight"], after[-1]["classifier.weight"])


def test_selection_restores_the_best_checkpoint_and_stops_on_patience():
    scores = [1, 9, 1, 1, 6, 6, 6, 0, 0, 0]
    model, seen = tiny_model("bert", "ForSequenceClassification"), []

    def evaluate(m):
        seen.append(m.classifier.weight.detach().clone())
        return scores[len(seen) - 1]

    cfg = TrainConfig(steps=10, batch_size=8, lr=1e-3, eval_every=1, patience=5)
    stats = fit(model, EXAMPLES, collate, ce, cfg, evaluate=evaluate)
    assert stats["best_step"] == 2 and stats["best_score"] == 9 and stats["steps"] == 7  # 5 evaluations after the best
    assert stats["evaluations"] == [[i + 1, s] for i, s in enumerate(scores[:7])]
    assert torch.equal(model.classifier.weight, seen[1])  # the best checkpoint's weights are back
