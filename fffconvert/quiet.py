"""Import-time chatter that users cannot act on, filtered out as soon as fffconvert is imported.

transformers imports torchao whenever it is installed. torchao then logs a warning for each of its
compiled libraries that this build of torch cannot load (CUDA-only ones on a CPU build), and torch
one for each Enum that torchao registers with its pytree. Only those messages are dropped: the
loggers' other warnings still reach the user.
"""
import logging

CHATTER = {"torchao": "Failed to load ", "torch.utils._pytree": "is an Enum subclass"}


class _DropChatter(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def install():
    for name, text in CHATTER.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropChatter) for f in logger.filters):
            logger.addFilter(_DropChatter(text))
