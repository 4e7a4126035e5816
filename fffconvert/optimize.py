"""A model's speed without graph code: `fast = fffconvert.optimize(model)`.

On a GPU an eager forward of a BERT-sized model is paced by the host (Python and kernel launches,
~6 ms), which hides what the FFF kernels save. `optimize` wraps the model so that each input shape
is captured once as a CUDA graph and replayed after that: later calls copy their inputs into the
graph's buffers, replay it (one launch) and return copies of its outputs. Works for converted and
dense transformers models alike, so both can be run, and compared, the same way.

Padding masks stay data: the graph takes the 2-D mask as an input and builds the 4-D mask itself.
This also avoids what transformers < 5.23 does under capture when no mask is given (an all-true
mask with stride 0 that no fused attention kernel takes, so attention falls back to fp32 math).

On the CPU, a model quantized with torchao (`quantize(model, "int8", backend="torchao")`) runs
under torch.compile with inductor's freezing (weights folded into the graph as constants): that is
how torchao's int8 is meant to run on a CPU (in eager mode it is 3-4x slower than torch's fbgemm
path), and it measured 1.1-1.6x faster than the fbgemm model in eager mode (docs/results/peers).
The first call of a new input shape compiles (BERT-base on 2 cores: 15 s; about a minute for the
second shape, after which the graph is dynamic in the sequence length). The weights are read when
a shape is compiled: a model changed afterwards needs a new `optimize`. Where it cannot compile
(no C++ compiler, say), one warning, and the model runs eagerly. Other CPU models are returned as
they are: their compiled forward measured no faster than eager.
"""
import itertools
import types
import warnings
from collections import OrderedDict

import torch
from torch import nn

from .quantize import quantized_by_torchao


def optimize(model: nn.Module, max_graphs: int = 8) -> nn.Module:
    """On a GPU, `model` replayed as CUDA graphs, one per input shape (the `max_graphs` last used are
    kept); on the CPU, a torchao-quantized model compiled, any other returned as it is. For
    inference: in training mode, or with gradients enabled, calls run the model eagerly."""
    if next(model.parameters()).device.type == "cuda":
        return GraphedModel(model, max_graphs)
    if quantized_by_torchao(model):
        return CompiledModel(model)
    return model


class _Inference(nn.Module):
    """A model's fast inference path (`_fast`), with every other call run by the model itself."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def __getattr__(self, name):  # the model's own attributes (config, get_input_embeddings, ...), as PEFT's wrappers do
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":  # not set yet (a copy being rebuilt): no recursion
                raise
            return getattr(self.model, name)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if self.model.training or torch.is_grad_enabled():
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self._fast(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class CompiledModel(_Inference):
    def __init__(self, model: nn.Module):
        super().__init__(model)
        # torch.compile keeps its graphs on the code object it compiled, and with freezing the weights are
        # constants in them: were two models of one class compiled from the same code, the second would run the
        # first's weights. So each CompiledModel compiles a call of its own code, as one graph (no frames of the
        # model's own code compiled apart), and module guards (8% of a call at 1 x 16 tokens) are not needed.
        # In a list: not a second registered copy of the weights.
        unguarded = {"guard_filter_fn": torch.compiler.skip_guard_on_all_nn_modules_unsafe}
        self._compiled = [torch.compile(_own_call(model), fullgraph=True, options=unguarded)]

    def _fast(self, **inputs):
        from torch._inductor import config as inductor

        try:
            with inductor.patch(freezing=True):  # read while compiling; freezing is inference-only
                return self._compiled[0](**inputs)
        except torch._dynamo.exc.TorchDynamoException as e:  # no C++ compiler, a graph break: still the model, slower
            reason = str(e).strip().splitlines()[0]
            warnings.warn(f"torch.compile could not compile the model ({reason}); it runs eagerly", stacklevel=2)
            self._compiled[0] = self.model
            return self.model(**inputs)


_calls = itertools.count()


def _own_call(model: nn.Module):
    """model(**inputs) as a function whose code object is its own (see CompiledModel)."""
    def call(**inputs):
        return model(**inputs)

    code = call.__code__.replace(co_name=f"optimized_call_{next(_calls)}")
    return types.FunctionType(code, call.__globals__, code.co_name, None, call.__closure__)


class GraphedModel(_Inference):
    def __init__(self, model: nn.Module, max_graphs: int = 8):
        super().__init__(model)
        self.max_graphs = max_graphs
        self._graphs = OrderedDict()  # key of the inputs -> (graph, static inputs, static output)

    def _fast(self, input_ids=None, attention_mask=None, **kwargs):
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
