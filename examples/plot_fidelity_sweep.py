"""Retention against neurons per token, from converted folders and their `fffconvert eval --json`.

    python examples/plot_fidelity_sweep.py sweep.png sweep.md out/d8:out/d8.eval.json out/d10:out/d10.eval.json ...

Writes the PNG (STS-B retention and embedding cosine against the mean neurons per token, a line per
end-to-end setting) and a Markdown table; needs matplotlib (fffconvert[glue]).
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
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for e2e in sorted({r["e2e"] for r in data}, reverse=True):  # one series per end-to-end setting
        series = [r for r in data if r["e2e"] == e2e]
        for ax, key in zip(axes, ("retention", "cosine")):
            ax.plot([r["neurons"] for r in series], [r[key] for r in series], "o-", label=f"end-to-end {e2e}")
            for r in series:
                ax.annotate(f"depth {r['shapes'][0][0]}", (r["neurons"], r[key]), textcoords="offset points",
                            xytext=(5, -3), fontsize=7)
    for ax, label in zip(axes, ("STS-B Spearman retention (%)", "embedding cosine to the dense model")):
        ax.set_xscale("log")
        ax.set_xticks([10, 15, 20, 30, 50, 100], labels=["10", "15", "20", "30", "50", "100"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("FFN neurons per token (mean over layers)")
        ax.set_ylabel(label)
    axes[0].axhline(99, color="gray", ls=":", lw=1)
    axes[1].axhline(0.95, color="gray", ls=":", lw=1)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Converted vs dense on STS-B dev sentences (dense Spearman {data[0]['dense']:.2f}); dotted: targets",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
