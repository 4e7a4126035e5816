"""fffconvert: turn a dense transformer's FFN blocks into fast feedforward (FFF) trees.

    model = fffconvert.convert(model, fffconvert.FFFConfig(depth=8), texts, tokenizer)
    fffconvert.save_pretrained(model, "out/m", tokenizer)
    model = fffconvert.from_pretrained("out/m")
"""
__version__ = "0.1.0"

from .convert import FFFConfig, convert  # noqa: E402
from .distill import DistillConfig  # noqa: E402
from .io import from_pretrained, save_pretrained  # noqa: E402
from .layer import FFF  # noqa: E402
from .surgery import ARCHITECTURES, ConversionError  # noqa: E402

__all__ = ["FFF", "FFFConfig", "DistillConfig", "convert", "save_pretrained", "from_pretrained",
           "ARCHITECTURES", "ConversionError", "__version__"]
