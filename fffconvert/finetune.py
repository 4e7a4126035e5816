"""Finetuning a converted model with `transformers.Trainer`.

A converted model trains with the plain Trainer: its leaves learn through the hard forward (the
one the kernels run), its routing stays as converted (hard decisions carry no gradient), and
evaluation runs the kernels. `RoutingTrainer` also trains the routing: for the first `soft_frac`
of the steps the FFF layers route softly, with the temperature lowered and the hardening loss
raised as in conversion (distill.routing_schedule), then hard, so that the model saved at the end
is exactly what the kernels run.

    model = transformers.AutoModelForSequenceClassification.from_pretrained("out/m", num_labels=2)
    trainer = fffconvert.RoutingTrainer(model=model, args=args, train_dataset=..., processing_class=tok)
    trainer.train()
    trainer.save_model("out/m-task")          # loads back as the FFF model
"""
from dataclasses import dataclass

import transformers

from .distill import routing_schedule
from .surgery import fff_layers


@dataclass
class RoutingSchedule:
    soft_frac: float = 0.5  # share of the steps with soft routing
    t_start: float = 0.3  # routing temperature at the start and the end of the soft phase
    t_end: float = 0.03
    hardening: float = 0.1  # weight of the hardening loss at the end of the soft phase


class RoutingTrainer(transformers.Trainer):
    """A Trainer that trains the FFF routing too: soft routing with the hardening loss, then hard."""

    def __init__(self, *args, routing: RoutingSchedule | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.routing = routing or RoutingSchedule()

    def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
        layers = fff_layers(model)
        soft, temperature, weight = routing_schedule(self.routing, self.state.global_step, self.state.max_steps)
        for layer in layers:
            layer.soft, layer.temperature = soft, temperature
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        if soft and weight:
            loss = loss + weight * sum(layer.last_hardening for layer in layers) / len(layers)
        return (loss, outputs) if return_outputs else loss

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # whatever happened, the model left behind routes hard
            for layer in fff_layers(self.model):
                layer.soft, layer.last_hardening = False, None
