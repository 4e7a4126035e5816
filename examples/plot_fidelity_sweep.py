"""Retention against neurons per token, from converted folders and their `fffconvert eval --json`.

    python examples/plot_fidelity_sweep.py sweep.png sweep.md out/d8:out/d8.eval.json out/d10:out/d10.eval.json ...

Writes the PNG (STS-B retention and embedding cosine against the mean neurons per token) and a
Markdown table; needs matplotlib (fffconvert[glue]).
"""
import json
import sys
from pathlib import Path


def rows(pairs):
    out = []
    for pair in pairs:
        folder, evaluation = pair.split(":")
        fff = json.loads((Path(folder) / "config.json").read_text())["fff"]
        ev = json.loads(Path(evaluation).read_text())
        shapes = sorted({(r["depth"], r["leaf_width"]) for r in fff["layers"]})
        out.append({"name": Path(folder).name, "neurons": fff["rows_per_token"], "shapes": shapes,
                    "stsb": ev["stsb_spearman"]["fff"], "dense": ev["stsb_spearman"]["dense"],
                    "retention": 100 * ev["stsb_spearman"]["retention"], "cosine": ev["embedding_cosine"],
                    "cosine_p5": ev["embedding_cosine_p5"], "e2e": _e2e(fff)})
    return sorted(out, key=lambda r: r["neurons"])


def _e2e(fff):
    e2e = fff.get("end_to_end") or {}
    return f"{e2e['steps']} x {e2e['batch_size']}" if e2e else "none"


def main(png, md, *pairs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = rows(pairs)
    lines = ["| conversion | tree shapes (depth, leaf width) | neurons per token | STS-B Spearman | retention "
             "| embedding cosine (mean / 5th pct) | end-to-end steps x texts |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['name']} | {', '.join(map(str, r['shapes']))} | {r['neurons']:.1f} | {r['stsb']:.2f} "
              f"| {r['retention']:.1f}% | {r['cosine']:.3f} / {r['cosine_p5']:.3f} | {r['e2e']} |" for r in data]
    lines.append(f"\nDense STS-B Spearman: {data[0]['dense']:.2f}.")
    Path(md).write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [r["neurons"] for r in data]
    ax.plot(xs, [r["retention"] for r in data], "o", label="STS-B retention (%)")
    for x, r in zip(xs, data):
        ax.annotate(r["name"], (x, r["retention"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("FFN neurons per token (routing + leaf), mean over layers")
    ax.set_ylabel("STS-B retention (%)")
    twin = ax.twinx()
    twin.plot(xs, [r["cosine"] for r in data], "s", color="tab:orange", label="embedding cosine")
    twin.set_ylabel("embedding cosine to the dense model")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
