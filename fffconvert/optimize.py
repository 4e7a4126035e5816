"""A model's GPU speed without graph code: `fast = fffconvert.optimize(model)`.

On a GPU an eager forward of a BERT-sized model is paced by the host (Python and kernel launches,
~6 ms), which hides what the FFF kernels save. `optimize` wraps the model so that each input shape
is captured once as a CUDA graph and replayed after that: later calls copy their inputs into the
graph's buffers, replay it (one launch) and return copies of its outputs. Works for converted and
dense transformers models alike, so both can be run, and compared, the same way.

Padding masks stay data: the graph takes the 2-D mask as an input and builds the 4-D mask itself.
This also avoids what transformers < 5.23 does under capture when no mask is given (an all-true
mask with stride 0 that no fused attention kernel takes, so attention falls back to fp32 math).
"""
from collections import OrderedDict

import torch
from torch import nn


def optimize(model: nn.Module, max_graphs: int = 8) -> nn.Module:
    """`model` replayed as CUDA graphs, one per input shape (the `max_graphs` last used are kept).
    For inference: in training mode, or with gradients enabled, calls run the model eagerly. A model
    on the CPU is returned as it is: the CPU kernels gain nothing from graphs."""
    if next(model.parameters()).device.type != "cuda":
        return model
    return GraphedModel(model, max_graphs)


class GraphedModel(nn.Module):
    def __init__(self, model: nn.Module, max_graphs: int = 8):
        super().__init__()
        self.model = model
        self.max_graphs = max_graphs
        self._graphs = OrderedDict()  # key of the inputs -> (graph, static inputs, static output)

    @property
    def config(self):
        return self.model.config

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if self.model.training or torch.is_grad_enabled():
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if attention_mask is None and input_ids is not None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        key = tuple(sorted((k, (v.shape, v.dtype, v.device) if torch.is_tensor(v) else v) for k, v in inputs.items()))
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                self._graphs.popitem(last=False)
            with torch.inference_mode():
                self._graphs[key] = self._capture(inputs)
        self._graphs.move_to_end(key)
        graph, static, output = self._graphs[key]
        with torch.inference_mode():  # the buffers were made in it
            for k, v in inputs.items():
                if torch.is_tensor(v):
                    static[k].copy_(v)
            graph.replay()
        return _clone(output)  # outside it: ordinary tensors

    def _capture(self, inputs: dict):
        static = {k: v.clone() if torch.is_tensor(v) else v for k, v in inputs.items()}

        def run():
            args = dict(static)
            if static.get("attention_mask") is not None and static["attention_mask"].dim() == 2:
                args["attention_mask"] = _mask_4d(static["attention_mask"], self.model)
            return self.model(**args)

        graph, output = capture(run)
        return graph, static, output


def capture(fn, warmup: int = 2):
    """(graph, output): fn() captured once as a CUDA graph (graph.replay() reruns it in one launch;
    output holds the tensors each replay writes)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = fn()
    return graph, output


def _mask_4d(mask: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The (batch, 1, 1, tokens) mask transformers' SDPA (True: attend) or eager attention (added
    to the scores) takes as given; other attention implementations get the 2-D mask."""
    keep = mask[:, None, None, :].bool()
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if impl == "sdpa":
        return keep
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(keep.shape, dtype=dtype, device=mask.device).masked_fill(~keep, torch.finfo(dtype).min)
    return mask


def _clone(output):
    """A copy of the graph's output (its buffers are overwritten by the next replay)."""
    if torch.is_tensor(output):
        return output.clone()
    if isinstance(output, (tuple, list)):
        return type(output)(_clone(v) for v in output)
    if isinstance(output, dict):  # ModelOutput too
        return type(output)(**{k: _clone(v) for k, v in output.items()})
    return output
