"""The `fffconvert` command: `fffconvert MODEL ...` converts, `fffconvert eval` measures a converted
model against its source, `fffconvert bench` times FFF against dense.

Every input is checked before any work or any write. A user mistake prints one `Error: ...` line
to stderr and exits with status 2, and nothing is written; set FFFCONVERT_DEBUG=1 for the full
traceback. Heavy imports happen inside the commands, so `--help` is instant.
"""
import math
import os
import sys
import time
import warnings
from pathlib import Path

import click

EPILOG = """\b
Examples:
  fffconvert --depth 10 --output out/minilm-fff             # the embedded MiniLM, offline
  fffconvert bert-base-uncased --depth 11 --output out/bert-fff
  fffconvert path/to/model --depth 8 --calib-data corpus.jsonl --text-column text --output out/m
  fffconvert path/to/model --depth 10 --neurons-per-token 14 --output out/m    # widths chosen per layer
  fffconvert eval out/m --stsb path/to/glue --json out/m-eval.json
  fffconvert bench --hidden 768 --ffn 3072 --depth 11 --tokens 1,128,2048
"""


def _fail(message: str):
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


_PACKAGE = str(Path(__file__).parent)
_format_warning = warnings.formatwarning


def _warning_line(message, category, filename, lineno, line=None):
    """fffconvert's own warnings are advice to the user: one `Warning:` line, as its errors are."""
    from .errors import Advice

    if str(filename).startswith(_PACKAGE) or issubclass(category, Advice):
        return f"Warning: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


def one_line_warnings():
    """Print fffconvert's warnings (and `Advice` from the recipes) as `Warning:` lines from now on."""
    warnings.formatwarning = _warning_line


class CLI(click.Group):
    """`fffconvert MODEL ...` means `fffconvert convert MODEL ...`; every usage error is one line."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h", "--version")):
            args = ["convert", *args]
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from .errors import UserError

        one_line_warnings()
        try:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (click.UsageError, click.BadParameter) as e:
            _fail(e.format_message())
        except UserError as e:
            if os.environ.get("FFFCONVERT_DEBUG"):
                raise
            _fail(str(e))
        except click.exceptions.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


class _NotEmpty:
    """An empty value is a mistake (a path would name the current folder), not the default."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty", param, ctx)
        return super().convert(value, param, ctx)


class NonEmptyPath(_NotEmpty, click.Path):
    pass


class NonEmptyName(_NotEmpty, click.types.StringParamType):
    """A folder, a hub name or a column name."""


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses nan and inf: nan passes any bound (it compares false)."""

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        if not math.isfinite(value):
            self.fail(f"{value} is not a finite number", param, ctx)
        return value


SEED = click.IntRange(0, 2**32 - 1)  # what every seeded library takes (numpy's is the narrowest)


def _ints(minimum: int, maximum: int | None = None):
    """Callback: "10" -> 10, "10,10,8" -> [10, 10, 8] (one per layer); each in [minimum, maximum]."""
    def parse(ctx, param, value):
        if value is None:
            return None
        try:
            values = [int(v) for v in str(value).split(",")]
        except ValueError:
            raise click.BadParameter(f"expected an integer or comma-separated integers, got {value!r}")
        if any(v < minimum for v in values):
            raise click.BadParameter(f"must be >= {minimum}, got {value}")
        if maximum is not None and any(v > maximum for v in values):
            raise click.BadParameter(f"must be <= {maximum}, got {value}")
        return values[0] if len(values) == 1 else values
    return parse


def _device(device: str) -> str:
    import torch

    from .errors import UserError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU")
    return device


DEVICE = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                      help="auto: the GPU when there is one.")


@click.group(cls=CLI, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fffconvert")
def main():
    """Convert a dense transformer's FFN blocks into fast feedforward trees, measure and benchmark them."""


@main.command(epilog=EPILOG)
@click.argument("model", required=False, type=NonEmptyName())
@click.option("--depth", callback=_ints(1), default="8", show_default=True,
              help="Tree depth D (2^D leaves, D routing rows per token); comma-separated: one per layer.")
@click.option("--leaf-width", callback=_ints(1), default=None,
              help="Neurons per leaf; comma-separated: one per layer. Default: ceil(FFN width / 2^D).")
@click.option("--neurons-per-token", type=FiniteFloat(min=2), default=None,
              help="A budget instead of a leaf width: the mean over layers of D + leaf width; the leaf widths "
                   "go where the measured error falls most.")
@click.option("--calib-data", type=NonEmptyPath(), default=None,
              help="Text to convert on: .txt (a text per line), .jsonl/.csv/.tsv (a column), or a folder of them. "
                   "Default: a general English corpus when `datasets` is online, else fffconvert's small corpus.")
@click.option("--text-column", type=NonEmptyName(), default=None, help="Column of .jsonl/.csv/.tsv text (default: text, sentence, ...).")
@click.option("--calib-tokens", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Calibration tokens per layer for the tree init.")
@click.option("--steps", type=click.IntRange(min=0), default=200, show_default=True,
              help="Layer-wise distillation steps per layer (0: clustering init only).")
@click.option("--e2e-steps", type=click.IntRange(min=0), default=None,
              help="End-to-end distillation steps against the dense model (0: off). Default: see README.")
@click.option("--e2e-batch-size", type=click.IntRange(min=1), default=None, help="Texts per end-to-end step.")
@click.option("--e2e-lr", type=FiniteFloat(min=0, min_open=True), default=None,
              help="End-to-end learning rate of everything but the FFF layers (default 1e-3; lower it if the "
                   "report says the model moved away from its source).")
@click.option("--e2e-minutes", type=FiniteFloat(min=0, min_open=True), default=None,
              help="A time budget instead of --e2e-steps: as many steps as fit, timed on this machine.")
@click.option("--e2e-augment", type=FiniteFloat(0, 0.5), default=None,
              help="Chance per token of deletion and of replacement in the end-to-end texts.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Record int8 for the remaining Linear layers: fffconvert.from_pretrained quantizes them on loading.")
@click.option("--output", "-o", type=NonEmptyPath(), default=None, help="Output folder. Default: out/<model name>-fff.")
@click.option("--overwrite", is_flag=True, help="Replace the output folder if it exists (and start over).")
@click.option("--resume", is_flag=True, help="Continue an interrupted conversion into the same output.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@DEVICE
@click.option("--allow-pickle", is_flag=True, help="Allow loading a pickle-only (.bin) checkpoint. Only for files you trust.")
def convert(model, depth, leaf_width, neurons_per_token, calib_data, text_column, calib_tokens, steps, e2e_steps,
            e2e_batch_size, e2e_lr, e2e_minutes, e2e_augment, quantize, output, overwrite, resume, seed, device, allow_pickle):
    """Convert MODEL (a local folder or a hub name; default: the embedded all-MiniLM-L6-v2)."""
    import shutil

    from .atomic import atomic_folder
    from .convert import FFFConfig
    from .distill import DistillConfig
    from .e2e import E2EConfig
    from .errors import UserError
    from .sources import embedded_model_path, inspect_source, load_dense
    from .texts import default_texts, read_texts

    for mistaken, why in ((text_column and not calib_data, "--text-column names a column of --calib-data: give the file too"),
                          (resume and overwrite, "--resume continues a conversion, --overwrite starts over: give one"),
                          (e2e_steps is not None and e2e_minutes is not None,
                           "--e2e-steps and --e2e-minutes both set the end-to-end length: give one")):
        if mistaken:
            raise UserError(why)
    e2e = {k: v for k, v in (("steps", e2e_steps), ("batch_size", e2e_batch_size), ("lr", e2e_lr),
                             ("minutes", e2e_minutes), ("augment", e2e_augment)) if v is not None}
    config = FFFConfig(depth=depth, leaf_width=leaf_width, neurons_per_token=neurons_per_token, calib_tokens=calib_tokens,
                       seed=seed, distill=DistillConfig(steps=steps), e2e=E2EConfig(**e2e))
    source = model or str(embedded_model_path())
    name = Path(model.rstrip("/")).name if model else "all-MiniLM-L6-v2"
    output = Path(output or f"out/{name}-fff")
    if model and Path(source).expanduser().exists() and Path(source).expanduser().resolve() == output.resolve():
        raise UserError(f"--output {output} is the source model's folder: write the converted model elsewhere")
    atomic_folder(output, overwrite=overwrite or resume)  # refuses an existing or unwritable output before any work
    if output.exists() and resume:
        raise UserError(f"{output} is complete already; nothing to resume (--overwrite starts over)")
    run = output.with_name(f".{output.name}.run")
    if run.exists() and _finished(run, output):  # killed after its save, before removing its checkpoints
        shutil.rmtree(run)
    if run.exists() and not (resume or overwrite):
        raise UserError(f"a conversion into {output} was interrupted; its checkpoints are in {run}: "
                        "pass --resume to continue it, or --overwrite to start over")
    if run.exists() and overwrite and not resume:
        shutil.rmtree(run)
    device = _device(device)
    inspect_source(source, allow_pickle)
    if calib_data:
        texts, where = read_texts(calib_data, text_column), str(calib_data)
    else:
        texts, where = default_texts(warn=lambda m: click.echo(m, err=True))
    src = load_dense(source, allow_pickle)
    _convert_and_save(src, config, texts, where, output, overwrite, device, run, resume, model, quantize)
    shutil.rmtree(run, ignore_errors=True)


def _finished(run, output) -> bool:
    """Whether the conversion checkpointed in `run` was saved to `output` (same run key)."""
    import json

    try:
        key = json.loads((run / "run.json").read_text())["key"]
        return json.loads((output / "config.json").read_text())["fff"].get("run") == key
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _convert_and_save(src, config, texts, where, output, overwrite, device, run, resume, model_arg, quantize):
    from tqdm.auto import tqdm

    from .convert import convert
    from .io import fidelity_table, report_table, save_pretrained

    t0 = time.perf_counter()
    model = convert(src.model, config, texts, src.tokenizer, device=device, pooling=src.pooling,
                    checkpoint_dir=run, resume=resume)
    fff = model.config.fff
    fff["texts"] = {"source": where, "count": len(texts)}
    if quantize:
        fff["quantize"] = quantize
    base = model_arg or "sentence-transformers/all-MiniLM-L6-v2"
    local = Path(base).expanduser()
    fff["source"] = str(local.resolve()) if local.is_dir() else base  # eval finds it from any folder
    t = time.perf_counter()
    command = " ".join(["fffconvert", *sys.argv[1:]])
    with tqdm(total=1, desc="saving", unit="folder") as bar:
        save_pretrained(model.cpu(), output, src.tokenizer, overwrite=overwrite or resume, command=command,
                        extra_files=src.extra_files, source_card=src.card, base_model=base)
        bar.update(1)
    fff["seconds"]["saving"] = round(time.perf_counter() - t, 2)
    click.echo(f"\nConverted {len(fff['layers'])} FFN layers: {fff['rows_per_token']:.1f} of "
               f"{fff['dense_ffn_width']} neurons per token on average; {fff['calibration_tokens']} calibration "
               f"tokens; text: {where} ({len(texts)} texts).\n")
    click.echo(report_table(fff["layers"]))
    if fff.get("end_to_end"):
        click.echo("\n" + fidelity_table(fff["end_to_end"]))
    click.echo("\nSeconds: " + ", ".join(f"{k} {v:.1f}" for k, v in fff["seconds"].items())
               + f" (total {time.perf_counter() - t0:.1f})")
    click.echo(f"Saved to {output}")


@main.command(name="eval", epilog=EPILOG)
@click.argument("converted", type=NonEmptyName())
@click.option("--dense", type=NonEmptyName(), default=None, help="The dense source (folder or hub name). Default: the one recorded at conversion.")
@click.option("--data", type=NonEmptyPath(), default=None,
              help="Text to measure on (formats as --calib-data); use text the model was not converted on. "
                   "A folder's files are also measured one by one. Default: fffconvert's evaluation corpus.")
@click.option("--text-column", type=NonEmptyName(), default=None)
@click.option("--max-texts", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Texts measured, at most, from each file of --data.")
@click.option("--stsb", type=NonEmptyPath(), default=None, help="STS-B dev (a GLUE folder or STS-B/dev.tsv): Spearman of both models.")
@click.option("--json", "json_path", type=NonEmptyPath(), default=None, help="Also write the results as JSON here.")
@click.option("--int8", is_flag=True, help="Also measure the model with its Linear layers in int8 (CPU): what --quantize costs.")
@click.option("--int8-backend", type=click.Choice(["auto", "torch", "torchao"]), default="auto", show_default=True,
              help="With --int8: torch's fbgemm path (eager; auto on the CPU) or torchao's, run compiled as fffconvert.optimize runs it.")
@DEVICE
def eval_(converted, dense, data, text_column, max_texts, stsb, json_path, int8, int8_backend, device):
    """Measure a converted model against its dense source on text it was not converted on."""
    from .errors import UserError
    from .evaluate import eval_texts, evaluate, stsb_pairs, to_markdown, write_json
    from .io import from_pretrained
    from .sources import load_dense

    if text_column and not data:
        raise UserError("--text-column names a column of --data: give the file too")
    _check_json(json_path)
    device = _device(device)
    if int8 and device != "cpu":
        raise UserError("--int8 measures the CPU's int8 kernels: use --device cpu")
    if int8_backend != "auto" and not int8:
        raise UserError("--int8-backend is for --int8")
    texts = eval_texts(data, text_column, max_texts)
    pairs = stsb_pairs(stsb) if stsb else None
    fff = from_pretrained(converted, quantize=False)
    src = load_dense(_dense_source(fff, dense, converted))
    result = evaluate(fff, src.model, src.tokenizer, texts, src.pooling, pairs, device)
    if int8 or fff.config.fff.get("quantize") and device == "cpu":
        from .optimize import optimize
        from .quantize import quantize, resolve_backend

        q = optimize(quantize(fff, "int8", backend=int8_backend))
        result["int8"] = evaluate(q, src.model, src.tokenizer, texts, src.pooling, pairs, device)
        result["int8"]["backend"] = resolve_backend(int8_backend, device)
    if pairs is not None and src.pooling is None:
        click.echo("Note: the source is not an embedding model (no sentence-transformers pooling): STS-B skipped.", err=True)
    click.echo(to_markdown(result))
    if json_path:
        write_json(result, json_path)
        click.echo(f"\nWrote {json_path}")


@main.command()
@DEVICE
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--hidden", type=click.IntRange(min=1, max=16384), default=768, show_default=True, help="H, the model width.")
@click.option("--ffn", type=click.IntRange(min=2, max=65536), default=3072, show_default=True, help="F, the dense FFN width.")
@click.option("--depth", type=click.IntRange(min=1, max=20), default=11, show_default=True)
@click.option("--leaf-width", type=click.IntRange(min=1, max=4096), default=2, show_default=True)
@click.option("--tokens", default="1,128,2048,16384", show_default=True, callback=_ints(1, 1 << 20),
              help="Token counts for the layer benchmark.")
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True, help="Timed rounds (median, min, max).")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1, max=1024), default=None, help="CPU threads (default: torch's).")
@click.option("--model/--no-model", default=True, show_default=True, help="Also time a whole BERT-shaped model.")
@click.option("--compile", is_flag=True, help="Also time the whole models under torch.compile (slow to compile).")
@click.option("--batch", type=click.IntRange(min=1, max=4096), default=8, show_default=True)
@click.option("--seq-len", type=click.IntRange(min=1, max=8192), default=128, show_default=True)
@click.option("--peers", is_flag=True,
              help="Whole models against what CPU users run instead: ONNX Runtime fp32 and int8 (with onnxruntime "
                   "installed), FFF fp32, FFF + int8 and, with torchao installed, FFF + int8 compiled, at 1 x 16, 1 x 128 and 8 x 128 tokens.")
@click.option("--converted", type=NonEmptyPath(), default=None,
              help="With --peers: a converted folder (and its recorded source, or --dense) instead of a random BERT shape.")
@click.option("--dense", type=NonEmptyName(), default=None, help="With --converted: its dense source, if not the recorded one.")
@click.option("--json", "json_path", type=NonEmptyPath(), default=None, help="Write the results here.")
def bench(json_path, peers, converted, dense, **kw):
    """Time FFF against torch's dense FFN (layer and whole model), side by side in one process."""
    from . import bench as b
    from .errors import UserError

    _check_json(json_path)
    if converted and not peers:
        raise UserError("--converted is for --peers")
    if peers:
        return _bench_peers(json_path, converted, dense, kw)
    kw["tokens"] = kw["tokens"] if isinstance(kw["tokens"], list) else [kw["tokens"]]
    if kw["leaf_width"] + kw["depth"] >= kw["ffn"]:
        raise UserError("--depth + --leaf-width must be below --ffn: the FFF would touch as many rows as the dense FFN")
    kw["device"] = _device(kw["device"])
    result = b.run(b.BenchConfig(**kw))
    click.echo(b.format_report(result))
    if json_path:
        b.save(result, json_path)
        click.echo(f"\nWrote {json_path}")


def _bench_peers(json_path, converted, dense, kw):
    import torch

    from . import bench as b
    from .errors import UserError
    from .peers import bench_peers, format_peers, peer_versions

    if kw["device"] not in ("auto", "cpu"):
        raise UserError("--peers compares CPU runtimes: use --device cpu")
    if kw["threads"]:
        torch.set_num_threads(kw["threads"])
    cfg = b.BenchConfig(**{**kw, "device": "cpu", "dtype": "float32", "tokens": [0]})
    if converted:
        from .io import from_pretrained
        from .sources import load_dense
        from .surgery import check_source

        fff = from_pretrained(converted, quantize=False)
        source = _dense_source(fff, dense, converted)
        dense_model, what = load_dense(source).model, f"{converted} against {source}"
        check_source(fff, dense_model)
    else:
        dense_model, fff, _ = b.bert_models(cfg)
        what = (f"BERT-shaped model, random weights, H={cfg.hidden} F={cfg.ffn}, FFF depth {cfg.depth} "
                f"leaf width {cfg.leaf_width}")
    rows = bench_peers(dense_model, fff, cfg)
    env = {**b.environment(cfg), **peer_versions()}
    click.echo(f"fffconvert bench --peers: {what}; CPU {env['cpu']}, {env['threads']} threads, torch {env['torch']}")
    click.echo(format_peers(rows))
    if json_path:
        b.save({"config": {**kw, "converted": converted}, "environment": env, "peers": rows}, json_path)
        click.echo(f"\nWrote {json_path}")


def _check_json(json_path):
    """A --json path that can be written, checked before any work."""
    from .atomic import check_writable
    from .errors import UserError

    if json_path:
        if Path(json_path).is_dir():
            raise UserError(f"--json {json_path} is a folder")
        check_writable(Path(json_path).parent / ".probe")


def _dense_source(fff, dense, converted) -> str:
    """The dense model to measure `fff` against: --dense, else the source its conversion recorded."""
    from .errors import UserError
    from .sources import embedded_model_path

    source = dense or fff.config.fff.get("source")
    if not source:
        raise UserError(f"{converted} does not record its source: give it with --dense")
    if source == "sentence-transformers/all-MiniLM-L6-v2" and not dense:
        source = str(embedded_model_path())  # the embedded copy: works offline
    return source


if __name__ == "__main__":
    main()
