"""Write the conversion text used for the fidelity measurements: the SST-2 and MRPC training
sentences of four words or more, deduplicated and shuffled (seed 0). STS-B stays out of it: its
sentences are what the converted model is measured on.

    python examples/make_real_text.py ../shared/glue real.txt
"""
import csv
import random
import sys
from pathlib import Path


def rows(path):
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def main(glue, out):
    glue = Path(glue)
    sst = [r["sentence"] for r in rows(glue / "SST-2" / "train.tsv")]
    mrpc = [s for r in rows(glue / "MRPC" / "train.tsv") for s in (r["#1 String"], r["#2 String"])]
    texts = [t.strip() for t in sst + mrpc if len(t.split()) >= 4]
    random.Random(0).shuffle(texts)
    texts = list(dict.fromkeys(texts))
    Path(out).write_text("\n".join(texts) + "\n")
    print(f"{len(texts)} texts -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
