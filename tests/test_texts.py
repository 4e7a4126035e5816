"""Conversion text: every format and folders, the column rule, and the default corpora."""
import json
import sys
import types

import pytest

from fffconvert import texts as t
from fffconvert.errors import UserError


def test_every_format_and_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\n  second line  \n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "from jsonl", "n": 1}) + "\n\n" + json.dumps({"text": "again"}) + "\n")
    (tmp_path / "c.csv").write_text('id,sentence\n1,"a csv text, with a comma"\n2,"a quoted\nnewline"\n')
    (tmp_path / "d.tsv").write_text("content\tlabel\na tsv text\t0\n")
    (tmp_path / "notes.md").write_text("not read")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("not read either")
    assert t.read_texts(tmp_path / "a.txt") == ["first line", "second line"]
    assert t.read_texts(tmp_path / "b.jsonl") == ["from jsonl", "again"]
    assert t.read_texts(tmp_path / "c.csv") == ["a csv text, with a comma", "a quoted\nnewline"]  # "sentence": usual
    assert t.read_texts(tmp_path / "d.tsv") == ["a tsv text"]
    assert t.read_texts(tmp_path) == ["first line", "second line", "from jsonl", "again", "a csv text, with a comma",
                                      "a quoted\nnewline", "a tsv text"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.txt").write_text("nested\n")
    (tmp_path / "empty.txt").write_text("\n")
    sources = t.read_text_sources(tmp_path)  # the same texts, by file (a file without text left out)
    assert list(sources) == ["a.txt", "b.jsonl", "c.csv", "d.tsv", "sub/e.txt"]
    assert sources["sub/e.txt"] == ["nested"] and t.read_texts(tmp_path)[-1] == "nested"
    assert t.read_text_sources(tmp_path / "a.txt") == {"a.txt": ["first line", "second line"]}


def test_tables_keep_their_rows(tmp_path):
    # GLUE's TSVs: texts that start with a quote, read as text (a CSV reader merged rows up to the next quote)
    (tmp_path / "glue.tsv").write_text('sentence\tlabel\n"a quote opens this text\t1\nthe next row\t0\n')
    assert t.read_texts(tmp_path / "glue.tsv") == ['"a quote opens this text', "the next row"]
    # a TSV written with quotes (pandas' default) reads as it was written
    (tmp_path / "quoted.tsv").write_text('text\tlabel\n"a tab\tinside"\t1\nplain\t0\n')
    assert t.read_texts(tmp_path / "quoted.tsv") == ["a tab\tinside", "plain"]
    (tmp_path / "ragged.csv").write_text("text,label\nfine,1\ntoo,many,fields\n")
    with pytest.raises(UserError, match="row 3 has 3 fields where the header has 2"):
        t.read_texts(tmp_path / "ragged.csv")
    # a line a newline broke (as in QQP's train.tsv): left out with a warning, if rare; if not, refused
    rows = [f"text {n}\t0" for n in range(1500)]
    (tmp_path / "broken.tsv").write_text("\n".join(["text\tlabel", *rows[:700], "a broken", *rows[700:]]) + "\n")
    with pytest.warns(UserWarning, match="left out 1 broken row"):
        assert t.read_texts(tmp_path / "broken.tsv") == [f"text {n}" for n in range(1500)]
    (tmp_path / "short.tsv").write_text("text\tlabel\nfine\t1\nshort\n")
    with pytest.raises(UserError, match="row 3 has 1 fields where the header has 2"):
        t.read_texts(tmp_path / "short.tsv")


def test_named_column(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"body2": "one", "text": "other"}) + "\n")
    assert t.read_texts(tmp_path / "x.jsonl", column="body2") == ["one"]
    with pytest.raises(UserError, match="no column 'nope'"):
        t.read_texts(tmp_path / "x.jsonl", column="nope")


def test_offline_default_is_the_shipped_corpus_with_a_note(monkeypatch):
    notes = []
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    texts, where = t.default_texts(warn=notes.append)
    assert texts == t.read_texts(t.SHIPPED_CORPUS) and "generated" in where
    assert len(notes) == 1 and "--calib-data" in notes[0]


def test_online_default_is_the_general_corpus(monkeypatch):
    rows = [{"text": " = Heading = \n"}, {"text": ""}, {"text": " A paragraph of an article .\n"}, {"text": " Another .\n"}]
    calls = []

    def load_dataset(*args, **kw):
        calls.append((args, kw))
        return iter(rows)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    notes = []
    texts, where = t.default_texts(max_texts=10, warn=notes.append)
    assert texts == ["A paragraph of an article .", "Another ."] and where == "Salesforce/wikitext/wikitext-103-raw-v1"
    assert calls[0][0] == t.GENERAL_CORPUS and calls[0][1]["streaming"] and not notes
