"""fffconvert: turn a dense transformer's FFN blocks into fast feedforward (FFF) trees.

    model = fffconvert.convert(model, fffconvert.FFFConfig(depth=10), texts, tokenizer)
    fffconvert.save_pretrained(model, "out/m", tokenizer)
    model = fffconvert.from_pretrained("out/m")   # or transformers.AutoModel.from_pretrained("out/m")
    fast = fffconvert.optimize(model.cuda().eval())  # on a GPU: CUDA graphs, one per input shape
    report = fffconvert.evaluate(model, dense, tokenizer, texts)  # what `fffconvert eval` reports
    fffconvert.quantize(model, "int8")  # the remaining Linear layers, in place

Importing fffconvert registers the converted model types with transformers' Auto classes.
"""
__version__ = "0.2.0"

from .quiet import install as _quiet_imports  # noqa: E402

_quiet_imports()  # before anything imports transformers (and, through it, torchao)

from .convert import FFFConfig, convert  # noqa: E402
from .distill import DistillConfig  # noqa: E402
from .e2e import E2EConfig  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .io import from_pretrained, push_to_hub, save_pretrained  # noqa: E402
from .layer import FFF  # noqa: E402
from .measures import Pooling  # noqa: E402
from .modeling import register as _register  # noqa: E402
from .optimize import optimize  # noqa: E402
from .quantize import quantize  # noqa: E402
from .surgery import ARCHITECTURES  # noqa: E402

_register()


def __getattr__(name):  # the Trainer (and accelerate) load only for those who finetune
    if name in ("RoutingTrainer", "RoutingSchedule"):
        from . import finetune

        return getattr(finetune, name)
    raise AttributeError(f"module 'fffconvert' has no attribute {name!r}")

__all__ = ["FFF", "FFFConfig", "DistillConfig", "E2EConfig", "Pooling", "convert", "save_pretrained", "from_pretrained",
           "push_to_hub", "optimize", "quantize", "evaluate", "RoutingTrainer", "RoutingSchedule", "ARCHITECTURES", "UserError", "__version__"]
