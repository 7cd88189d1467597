"""Corpus readers: every format, columns, compression, bad files."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nearest_prompt.common.errors import InputError
from nearest_prompt.indexer.readers import check_sources, iter_values


def _values(path, column=None):
    (src,) = check_sources([path], column=column)
    return [v for batch in iter_values(src) for v in batch]


def test_formats(tmp_path):
    pq.write_table(pa.table({"prompt": ["a", None, "b"], "n": [1, 2, 3]}), tmp_path / "p.parquet")
    (tmp_path / "c.csv").write_text('id,prompt\n1,"a, with comma"\n2,"multi\nline"\n3,\n')
    (tmp_path / "t.tsv").write_text("caption\tx\nhello\t1\n")
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "j1"}) + "\n\n" + json.dumps("j2") + "\n"
                                      + json.dumps({"prompt": 5}) + "\n")
    with gzip.open(tmp_path / "z.txt.gz", "wt") as f:
        f.write("gz1\ngz2\n")
    assert _values(tmp_path / "p.parquet") == ["a", None, "b"]
    assert _values(tmp_path / "c.csv") == ["a, with comma", "multi\nline", ""]
    assert _values(tmp_path / "t.tsv", column="caption") == ["hello"]
    assert _values(tmp_path / "p.txt") == ["one\n", "\n", "two\n"]
    assert _values(tmp_path / "p.jsonl") == ["j1", "j2", 5]
    assert _values(tmp_path / "z.txt.gz") == ["gz1\n", "gz2\n"]


@pytest.mark.parametrize("name,content,match", [
    ("p.parquet", None, "no column 'prompt'"),
    ("c.csv", "id,text\n1,a\n", "no column 'prompt'"),
    ("j.jsonl", '{"text": "a"}\n', "no key 'prompt'"),
    ("bad.jsonl", '{"prompt": "a"}\n{oops\n', ":2: not valid JSON"),
    ("x.xlsx", "whatever", "unknown prompt file type"),
    ("corrupt.parquet", "PAR1 not really", "not a readable parquet"),
    ("latin.txt", b"caf\xe9\n", "not UTF-8"),
    ("empty.csv", "", "empty file"),
])
def test_bad_corpus_files(tmp_path, name, content, match):
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"text": ["a"]}), path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InputError, match=match):
        _values(path)


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such prompt file"):
        check_sources([tmp_path / "nope.parquet"])
    with pytest.raises(InputError, match="is a directory"):
        check_sources([tmp_path])
    with pytest.raises(InputError, match="no prompt files"):
        check_sources([])


def test_csv_with_a_byte_order_mark_or_another_delimiter_is_read(tmp_path):
    from nearest_prompt.indexer.readers import check_sources, iter_values

    bom = tmp_path / "excel.csv"
    bom.write_bytes("\ufeffprompt,x\na red fox,1\n".encode())
    semi = tmp_path / "semi.csv"
    semi.write_text("prompt;source\na red fox, 4k;lexica\nan owl, oil;krea\n")
    piped = tmp_path / "piped.csv"
    piped.write_text("id|prompt\n1|a cat, in the rain\n")
    for path, sep, values in [(bom, ",", ["a red fox"]), (semi, ";", ["a red fox, 4k", "an owl, oil"]),
                              (piped, "|", ["a cat, in the rain"])]:
        [source] = check_sources([path])
        assert source.delimiter == sep and [v for batch in iter_values(source) for v in batch] == values
    [given] = check_sources([semi], delimiter=";")
    assert given.delimiter == ";"
