"""ms per end-to-end distillation step of a converted-shape student with each FFF training forward:
soft routing, hard routing by gathering each token's leaf rows (FFF.hard_forward), and hard routing
as every leaf's matmuls masked to the token's leaf (FFF.masked_forward, the default on a GPU).

    python examples/profile_distill_step.py [MODEL] [--device cuda] [--depth 8 --leaf-width 6]

Random FFF weights (timing only), random token ids, batch 128 x 64, hidden-state + embedding loss,
AdamW; two rounds of every form, each 30 timed steps after 5 warm-up steps (2 on a CPU).
"""
import copy
import time

import click
import torch
import transformers

from fffconvert.e2e import E2EConfig, distillation_loss
from fffconvert.measures import Pooling
from fffconvert.sources import embedded_model_path
from fffconvert.surgery import empty_fff_model, fff_layers


@click.command()
@click.argument("model", required=False)
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
@click.option("--depth", default=8, show_default=True)
@click.option("--leaf-width", default=6, show_default=True)
def main(model, device, depth, leaf_width):
    torch.backends.cuda.matmul.allow_tf32 = True
    dense = transformers.AutoModel.from_pretrained(model or embedded_model_path(), dtype=torch.float32).to(device).eval()
    student = empty_fff_model(copy.deepcopy(dense), depth, leaf_width).to(device).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    ids = torch.randint(1000, 20000, (128, 64), device=device)
    mask = torch.ones_like(ids)
    cfg, pooling = E2EConfig(), Pooling()
    sync = torch.cuda.synchronize if "cuda" in device else (lambda: None)
    steps = 30 if "cuda" in device else 2

    def step():
        with torch.no_grad():
            t = dense(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        s = student(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        loss = distillation_loss(s, t, mask, cfg, pooling)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    forms = {"soft": lambda layer: layer.soft_forward, "hard, gather": lambda layer: layer.hard_forward,
             "hard, masked": lambda layer: layer.masked_forward}
    for layer in fff_layers(student):
        layer.temperature = 0.1  # the soft form's, mid-schedule
    for _ in range(2):
        for name, form in forms.items():
            for layer in fff_layers(student):
                layer.forward = form(layer)  # this instance only: the form under test
            for _ in range(5 if "cuda" in device else 1):
                step()
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            click.echo(f"{name}: {1e3 * (time.perf_counter() - t0) / steps:.1f} ms per step")


if __name__ == "__main__":
    main()
