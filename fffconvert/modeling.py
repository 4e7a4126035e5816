"""Converted models as transformers model types, registered with the Auto classes.

Each supported architecture gets a config class `FFF<Arch>Config` of model type
"fffconvert-<type>" (a subclass of the source's config: every field is kept, plus the `fff`
section) and, for each of its transformers classes, `FFF<Class>`: the same class, whose FFNs are
FFF layers of the shapes the config records. After `import fffconvert`, AutoConfig, AutoModel,
AutoModelFor<Task>, pipeline() and sentence-transformers load a converted folder as the FFF model.
Without fffconvert, transformers does not know the model type "fffconvert-..." and refuses the
folder with that name in its error; a dense class given the folder directly meets the FFF leaf
weights where it expects its FFN input projection, with another shape, and refuses too
(layer.py). No loader gets the dense model with random FFNs.
"""
import transformers

from .surgery import ARCHITECTURES, CONVERTED_PREFIX, empty_fff_model, fff_shapes

PREFIX = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra", "distilbert": "DistilBert"}
HEADS = {
    "Model": "AutoModel",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForTokenClassification": "AutoModelForTokenClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForMultipleChoice": "AutoModelForMultipleChoice",
    "ForPreTraining": "AutoModelForPreTraining",
}


def _make_classes():
    configs, models = {}, {}
    for model_type, prefix in PREFIX.items():
        source_config = getattr(transformers, f"{prefix}Config")
        config_cls = type(f"FFF{prefix}Config", (source_config,),
                          {"model_type": CONVERTED_PREFIX + model_type, "__module__": __name__})
        configs[model_type] = config_cls
        for head in HEADS:
            base = getattr(transformers, prefix + head, None)
            if base is None:  # not every family has every head (ELECTRA has no ForPreTraining of this kind)
                continue
            cls = type(f"FFF{prefix}{head}", (base,), {"config_class": config_cls, "__module__": __name__})
            cls.__init__ = _make_init(cls)
            models[(model_type, head)] = cls
    return configs, models


def _make_init(cls):
    def __init__(self, config, *args, **kwargs):
        super(cls, self).__init__(config, *args, **kwargs)
        empty_fff_model(self, *fff_shapes(config.fff))
    return __init__


CONFIGS, MODELS = _make_classes()
globals().update({c.__name__: c for c in CONFIGS.values()})
globals().update({c.__name__: c for c in MODELS.values()})
assert set(PREFIX) == set(ARCHITECTURES), "every supported architecture needs its model types here"


def register():
    """Register every FFF model type with transformers' Auto classes (idempotent)."""
    for model_type, config_cls in CONFIGS.items():
        try:
            transformers.AutoConfig.register(config_cls.model_type, config_cls)
        except ValueError:  # registered already
            pass
    for (model_type, head), cls in MODELS.items():
        auto = getattr(transformers, HEADS[head])
        try:
            auto.register(CONFIGS[model_type], cls)
        except ValueError:
            pass


def fff_class_of(model) -> type:
    """The FFF class that stands for `model`'s transformers class."""
    for cls in type(model).__mro__:
        for (model_type, head), fff_cls in MODELS.items():
            if cls is fff_cls or cls.__name__ == PREFIX[model_type] + head:
                return fff_cls
    raise TypeError(f"{type(model).__name__} has no FFF model type; supported: "
                    f"{sorted(c.__name__ for c in MODELS.values())}")


def as_fff_model(model):
    """Turn a converted transformers model (FFNs already swapped) into its FFF class, in place,
    so that every way of saving it (save_pretrained, Trainer, sentence-transformers) writes the
    FFF model type. The classes add no state: only the class and the config's model type change."""
    cls = fff_class_of(model)
    model.__class__ = cls
    model.config.__class__ = cls.config_class
    _register_outputs(model)
    return model


def _register_outputs(model):
    # transformers 5 finds which outputs a model can return on request (hidden states, attentions)
    # in a registry keyed by the name of the model's class, filled when a model is built; a class
    # swapped in place must be entered as its __init__ would have, or output_hidden_states=True
    # silently returns None. The key is str(class) in every version that has the registry (5.24
    # wraps the dict to take the model itself, hence the plain dict's own __setitem__).
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # versions without it read the class attribute directly
        return
    dict.__setitem__(_CAN_RECORD_REGISTRY, str(model.__class__), model._can_record_outputs)


def is_converted_config(config) -> bool:
    return str(getattr(config, "model_type", "")).startswith(CONVERTED_PREFIX) or bool(getattr(config, "fff", None))
