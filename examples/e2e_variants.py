"""Ablations of the end-to-end phase from one layer-wise conversion (docs/results/fidelity/e2e-variants).

    python examples/e2e_variants.py HERE OUT DEVICE '{"NAME": {"train": "all|fff|fff+ln|all-but-words", "e2e": {E2EConfig fields}}, ...}' [MAX_TEXTS] [DEPTH]

HERE holds minilm/ (the dense model), real.txt (the conversion text), and for the evaluations
stsb_sents.txt, glue/ and heldout/ (examples/make_real_text.py writes all but glue/). The layer-wise
depth-DEPTH model is made once; each variant distills a copy of it end to end, training everything
("all", as convert does), only the FFF layers ("fff"), the FFF layers and the LayerNorms
("fff+ln") or all but the word embeddings ("all-but-words"), then is saved to OUT/NAME and
measured with `fffconvert eval` on STS-B's sentences and, by kind, on heldout/.
"""
import copy
import json
import os
import subprocess
import sys
import time

import fffconvert
from fffconvert.calibrate import tokenize
from fffconvert.convert import FFFConfig, convert, end_to_end, split_texts
from fffconvert.e2e import E2EConfig
from fffconvert.sources import load_dense
from fffconvert.surgery import fff_layers
from fffconvert.texts import read_texts

here, out, device, variants = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
max_texts = int(sys.argv[5]) if len(sys.argv) > 5 else None
depth = int(sys.argv[6]) if len(sys.argv) > 6 else 8
src = load_dense(f"{here}/minilm")
texts = read_texts(f"{here}/real.txt")[:max_texts]
teacher = copy.deepcopy(src.model).to(device).eval()
t0 = time.time()
lw = convert(src.model, FFFConfig(depth=depth, e2e=E2EConfig(steps=0)), texts, src.tokenizer, device=device,
             pooling=src.pooling, progress=False)
print("layer-wise", round(time.time() - t0, 1), "s", flush=True)
heldout, train = split_texts(texts, FFFConfig.seed)  # as convert split them (its defaults: seed, max_length)
ids = tokenize(src.tokenizer, train, FFFConfig.max_length)
for name, spec in variants.items():
    t0 = time.time()
    cfg = FFFConfig(depth=depth, e2e=E2EConfig(**spec.get("e2e", {})))
    m = copy.deepcopy(lw)
    fff_ids = {id(p) for layer in fff_layers(m) for p in layer.parameters()}
    words = m.get_input_embeddings().weight
    for pname, p in m.named_parameters():
        keep = {"all": True, "fff": id(p) in fff_ids, "fff+ln": id(p) in fff_ids or "LayerNorm" in pname,
                "all-but-words": p is not words}[spec.get("train", "all")]
        p.requires_grad_(keep)
    print(name, "trainable", sum(p.numel() for p in m.parameters() if p.requires_grad), flush=True)
    rep = end_to_end(m, teacher, cfg, ids, heldout, src.tokenizer, device, src.pooling, None, False, False)
    for p in m.parameters():
        p.requires_grad_(True)
    m.config.fff["end_to_end"] = rep
    m.config.fff["source"] = f"{here}/minilm"
    path = f"{out}/{name}"
    fffconvert.save_pretrained(m.cpu(), path, src.tokenizer, overwrite=True, extra_files=src.extra_files,
                               source_card=src.card, base_model="sentence-transformers/all-MiniLM-L6-v2")
    print(json.dumps({"name": name, "spec": spec, "seconds": round(time.time() - t0, 1),
                      "before": rep["layerwise_only"].get("embedding_cosine"), "after": rep["after"]}), flush=True)
    fff = [sys.executable, "-m", "fffconvert.cli", "eval", path, "--dense", f"{here}/minilm", "--device", device]
    if os.path.exists(f"{here}/stsb_sents.txt"):
        subprocess.run(fff + ["--data", f"{here}/stsb_sents.txt", "--stsb", f"{here}/glue", "--json", f"{path}.eval.json"],
                       stdout=open(f"{path}.eval.md", "w"), stderr=subprocess.STDOUT)
        subprocess.run(fff + ["--data", f"{here}/heldout", "--max-texts", "1000", "--json", f"{path}-by-kind.eval.json"],
                       stdout=open(f"{path}-by-kind.eval.md", "w"), stderr=subprocess.STDOUT)
    print(name, "done", round(time.time() - t0, 1), "s", flush=True)
