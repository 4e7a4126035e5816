"""The `fffconvert` command. `fffconvert MODEL ...` converts; `fffconvert bench ...` benchmarks.

User mistakes print one `Error: ...` line to stderr and exit with status 2, and nothing is written;
set FFFCONVERT_DEBUG=1 for the full traceback. Heavy imports happen inside the commands, so
`--help` is instant.
"""
import os
import sys
import time

import click

EPILOG = """\b
Examples:
  fffconvert --depth 8 --output out/minilm-fff        # the embedded MiniLM, offline
  fffconvert bert-base-uncased --depth 11 --output out/bert-fff
  fffconvert path/to/model --depth 8 --leaf-width 4 --calib-data corpus.txt --output out/m
  fffconvert bench --hidden 768 --ffn 3072 --depth 11 --tokens 1,128,2048
"""


class DefaultToConvert(click.Group):
    """`fffconvert MODEL ...` means `fffconvert convert MODEL ...`."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h", "--version")):
            args = ["convert", *args]
        return super().parse_args(ctx, args)


def _fail(message: str):
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def run_user_errors(fn):
    """Turn the toolkit's user-facing errors into one line and exit status 2."""
    def wrapper(*a, **kw):
        from .surgery import ConversionError

        try:
            return fn(*a, **kw)
        except ConversionError as e:
            if os.environ.get("FFFCONVERT_DEBUG"):
                raise
            _fail(str(e))
    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


@click.group(cls=DefaultToConvert, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fffconvert")
def main():
    """Convert a dense transformer's FFN blocks into fast feedforward trees, and benchmark them."""


@main.command(epilog=EPILOG)
@click.argument("model", required=False)
@click.option("--depth", type=int, required=True, help="Tree depth D: 2^D leaves, D routing rows per token.")
@click.option("--leaf-width", type=int, default=None, help="Neurons per leaf. Default: ceil(FFN width / 2^D).")
@click.option("--calib-data", type=click.Path(dir_okay=False), default=None,
              help="Text file, one text per line, for calibration. Default: the corpus shipped with fffconvert.")
@click.option("--calib-tokens", type=int, default=65536, show_default=True, help="Calibration tokens per layer.")
@click.option("--steps", type=int, default=200, show_default=True,
              help="Layer-wise distillation steps per layer (0: clustering init only).")
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help="Output folder. Default: out/<model name>-fff-d<D>.")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--allow-pickle", is_flag=True, help="Allow loading a pickle-only (.bin) checkpoint. Only for files you trust.")
@run_user_errors
def convert(model, depth, leaf_width, calib_data, calib_tokens, steps, output, overwrite, seed, device, allow_pickle):
    """Convert MODEL (a local folder or a hub name; default: the embedded all-MiniLM-L6-v2)."""
    from pathlib import Path

    from .calibrate import DEFAULT_CORPUS, read_texts
    from .convert import FFFConfig
    from .distill import DistillConfig
    from .io import atomic_folder, embedded_model_path, load_dense
    from .surgery import ConversionError

    config = FFFConfig(depth=depth, leaf_width=leaf_width, calib_tokens=calib_tokens, seed=seed,
                       distill=DistillConfig(steps=steps))
    source = model or str(embedded_model_path())
    name = Path(model.rstrip("/")).name if model else "all-MiniLM-L6-v2"
    output = Path(output or f"out/{name}-fff-d{depth}")
    atomic_folder(output, overwrite)  # refuses an existing folder before any work
    texts = read_texts(calib_data or DEFAULT_CORPUS)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConversionError("--device cuda, but torch sees no CUDA GPU")
    dense, tokenizer = load_dense(source, allow_pickle)
    _convert_and_save(dense, tokenizer, config, texts, output, overwrite, device)


def _convert_and_save(model, tokenizer, config, texts, output, overwrite, device):
    from tqdm.auto import tqdm

    from .convert import convert
    from .io import report_table, save_pretrained

    t0 = time.perf_counter()
    model = convert(model, config, texts, tokenizer, device=device)
    t = time.perf_counter()
    command = " ".join(["fffconvert", *sys.argv[1:]])
    with tqdm(total=1, desc="saving", unit="folder") as bar:
        save_pretrained(model.cpu(), output, tokenizer, overwrite=overwrite, command=command)
        bar.update(1)
    fff = model.config.fff
    fff["seconds"]["saving"] = round(time.perf_counter() - t, 2)
    click.echo(f"\nConverted {len(fff['layers'])} FFN layers: depth {fff['depth']}, leaf width {fff['leaf_width']}, "
               f"{fff['rows_per_token']} of {fff['rows_total']} FFN rows per token "
               f"(dense: {fff['dense_ffn_width']} neurons); {fff['calibration_tokens']} calibration tokens.\n")
    click.echo(report_table(fff["layers"]))
    click.echo("\nSeconds: " + ", ".join(f"{k} {v:.1f}" for k, v in fff["seconds"].items())
               + f" (total {time.perf_counter() - t0:.1f})")
    click.echo(f"Saved to {output}")


def _int_list(ctx, param, value):
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}")


@main.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--hidden", type=int, default=768, show_default=True, help="H, the model width.")
@click.option("--ffn", type=int, default=3072, show_default=True, help="F, the dense FFN width.")
@click.option("--depth", type=int, default=11, show_default=True)
@click.option("--leaf-width", type=int, default=2, show_default=True)
@click.option("--tokens", default="1,128,2048,16384", show_default=True, callback=_int_list,
              help="Token counts for the layer benchmark.")
@click.option("--repeats", type=int, default=10, show_default=True, help="Timed rounds (median, min, max).")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads (default: torch's).")
@click.option("--model/--no-model", default=True, show_default=True, help="Also time a whole BERT-shaped model.")
@click.option("--compile", is_flag=True, help="Also time the whole models under torch.compile (slow to compile).")
@click.option("--batch", type=int, default=8, show_default=True)
@click.option("--seq-len", type=int, default=128, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results here.")
@run_user_errors
def bench(json_path, **kw):
    """Time FFF against torch's dense FFN (layer and whole model), side by side in one process."""
    import torch

    from . import bench as b
    from .surgery import ConversionError

    if kw["device"] == "cuda" and not torch.cuda.is_available():
        raise ConversionError("--device cuda, but torch sees no CUDA GPU")
    if kw["depth"] < 1 or kw["leaf_width"] < 1 or min(kw["tokens"]) < 0 or kw["repeats"] < 1:
        raise ConversionError("--depth, --leaf-width and --repeats must be >= 1 and --tokens >= 0")
    result = b.run(b.BenchConfig(**kw))
    click.echo(b.format_report(result))
    if json_path:
        b.save(result, json_path)
        click.echo(f"\nWrote {json_path}")


if __name__ == "__main__":
    main()
