"""The text a conversion learns from: the user's files, a general English corpus, or the shipped one.

`read_texts(path, column)` (or `read_text_sources`, the same by file) takes
  - .txt: one text per line;
  - .jsonl: one JSON object per line, the text in `column`;
  - .csv / .tsv: a header row, the text in `column`;
  - a folder: every such file in it (recursively, sorted by name).
Without `column`, the first of TEXT_COLUMNS that the file has is used.
"""
import csv
import io
import json
import sys
import warnings
from pathlib import Path

from .errors import UserError

SHIPPED_CORPUS = Path(__file__).parent / "data" / "calibration.txt"
SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv")
TEXT_COLUMNS = ("text", "sentence", "content", "document", "body")
# Rows of too few fields are lines that a newline inside a field broke (QQP's train.tsv has a few); up
# to this share of a table's rows are left out with a warning (here and by the GLUE recipe's reader).
MAX_BROKEN_SHARE = 1e-3
# The default corpus when `datasets` can reach the hub: Wikipedia articles (WikiText-103).
GENERAL_CORPUS = ("Salesforce/wikitext", "wikitext-103-raw-v1")


def read_texts(path, column: str | None = None) -> list[str]:
    """Non-empty texts of a file or folder; one clear error for anything unreadable or empty."""
    return [t for texts in read_text_sources(path, column).values() for t in texts]


def read_text_sources(path, column: str | None = None) -> dict[str, list[str]]:
    """The texts of a file or folder by file (a folder's files by their path inside it), so that
    a report can say where a model drifts; one clear error for anything unreadable or empty."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise UserError(f"text folder {path} has no {', '.join(SUFFIXES)} files")
        sources = {str(f.relative_to(path)): _read_file(f, column) for f in files}
    else:
        sources = {path.name: _read_file(path, column)}
    if not any(sources.values()):
        raise UserError(f"text {'folder' if path.is_dir() else 'file'} {path} has no text")
    return {name: texts for name, texts in sources.items() if texts}


def _read_file(path: Path, column: str | None) -> list[str]:
    suffix = path.suffix.lower()
    if path.exists() and not path.is_file():
        raise UserError(f"cannot read text file {path}: not a regular file")
    if suffix not in SUFFIXES and suffix:
        raise UserError(f"text file {path}: unknown format {suffix!r}; use one of {', '.join(SUFFIXES)}")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"cannot read text file {path}: no such file")
    except OSError as e:
        raise UserError(f"cannot read text file {path}: {e.strerror}")
    except UnicodeDecodeError:
        raise UserError(f"cannot read text file {path}: not UTF-8 text")
    if "\x00" in raw:
        raise UserError(f"cannot read text file {path}: it holds NUL bytes (a binary file?)")
    if suffix in ("", ".txt"):
        texts = raw.splitlines()
    elif suffix == ".jsonl":
        texts = _jsonl(path, raw, column)
    else:
        texts = _table(path, raw, column, "\t" if suffix == ".tsv" else ",")
    return [t.strip() for t in texts if t.strip()]


def _pick_column(path: Path, columns, column: str | None) -> str:
    if column is not None:
        if column not in columns:
            raise UserError(f"{path}: no column {column!r}; it has {sorted(columns)}")
        return column
    for name in TEXT_COLUMNS:
        if name in columns:
            return name
    raise UserError(f"{path}: none of the columns {sorted(columns)} is a usual text column "
                    f"({', '.join(TEXT_COLUMNS)}); name it with --text-column")


def _jsonl(path: Path, raw: str, column: str | None) -> list[str]:
    texts, key = [], None
    for n, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {n}: not JSON ({e.msg})")
        if not isinstance(row, dict):
            raise UserError(f"{path}, line {n}: expected a JSON object per line")
        key = key or _pick_column(path, row, column)
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise UserError(f"{path}, line {n}: {key!r} is not a string")
        texts.append(value or "")
    return texts


def _table(path: Path, raw: str, column: str | None, delimiter: str) -> list[str]:
    """The column of a table. A TSV is read without quoting, as the format has none (GLUE's files hold
    texts that start with a quote, which a CSV reader takes for a field running on to the next
    quote, merging rows); a CSV with RFC 4180's quoting (a quoted field keeps its newlines). A file
    whose rows come out more even the other way (a TSV written with quotes) is read that way."""
    csv.field_size_limit(sys.maxsize)
    styles = (csv.QUOTE_NONE, csv.QUOTE_MINIMAL) if delimiter == "\t" else (csv.QUOTE_MINIMAL, csv.QUOTE_NONE)
    parses = [[r for r in csv.reader(io.StringIO(raw, newline=""), delimiter=delimiter, quoting=q) if r] for q in styles]
    rows, uneven = min(((rows, _uneven(rows)) for rows in parses), key=lambda p: len(p[1]))  # a tie: the format's own
    if not rows:
        return []
    i, width = rows[0].index(_pick_column(path, rows[0], column)), len(rows[0])
    if uneven and (max(got for _, got in uneven) > width or len(uneven) > MAX_BROKEN_SHARE * (len(rows) - 1)):
        n, got = uneven[0]
        raise UserError(f"{path}: row {n} has {got} fields where the header has {width}")
    if uneven:
        where = ", ".join(str(n) for n, _ in uneven[:5]) + (", ..." if len(uneven) > 5 else "")
        warnings.warn(f"{path}: left out {len(uneven)} broken row(s) of too few fields ({where})", stacklevel=2)
    return [r[i] for r in rows[1:] if len(r) == width]


def _uneven(rows: list[list[str]]) -> list[tuple[int, int]]:
    """(row number, fields) of every row whose field count is not the header's."""
    return [(n, len(r)) for n, r in enumerate(rows[1:], start=2) if len(r) != len(rows[0])]


def default_texts(max_texts: int = 200_000, warn=print) -> tuple[list[str], str]:
    """(texts, where they came from): the general corpus when `datasets` can reach the hub, else
    the shipped corpus, with one line saying that real text from the user's domain does better."""
    try:
        import datasets
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise OSError("offline")
        stream = datasets.load_dataset(*GENERAL_CORPUS, split="train", streaming=True)
        texts = []
        for row in stream:
            line = row["text"].strip()
            if line and not line.startswith("="):  # WikiText's section headings
                texts.append(line)
                if len(texts) >= max_texts:
                    break
        if texts:
            return texts, "/".join(GENERAL_CORPUS)
    except Exception:  # no package, no network, no such dataset: the shipped corpus below
        pass
    warn("Note: converting on fffconvert's small generated corpus; real text from your model's domain "
         "(--calib-data) gives a more faithful model.")
    return read_texts(SHIPPED_CORPUS), "fffconvert's generated corpus"
