"""Corpora and packing: the built-in split, local file formats, streaming, caching, and bad input."""

import json
import re
import sysconfig
from itertools import chain
from pathlib import Path
from pydoc_data.topics import topics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset

from albertagpt.data import (
    TextSource,
    builtin_corpus,
    iter_texts,
    load_text_splits,
    pack_into_blocks,
    stdlib_source_files,
    stdlib_sources,
)
from albertagpt.tokenizer import train_tokenizer

DOCUMENTS = builtin_corpus("train")[:20]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(DOCUMENTS, vocab_size=300)


def test_builtin_corpus_splits_topics_deterministically():
    train, held_out = builtin_corpus("train"), builtin_corpus("validation")
    unique_texts = set(topics.values())
    assert len(train + held_out) == len(unique_texts) and set(train + held_out) == unique_texts
    assert not set(train) & set(held_out)
    share = sum(map(len, held_out)) / sum(map(len, unique_texts))
    assert 0.03 < share < 0.15 and len(held_out) == (len(unique_texts) + 9) // 10
    assert builtin_corpus("validation") == held_out
    with pytest.raises(ValueError, match="split"):
        builtin_corpus("test")


def test_stdlib_corpus_holds_out_every_tenth_source_file_and_no_tests():
    train, held_out = builtin_corpus("train", "stdlib"), builtin_corpus("validation", "stdlib")
    documents = stdlib_sources()
    assert documents[::10] == held_out and len(train) + len(held_out) == len(documents)
    assert not set(train) & set(held_out)
    assert 5e6 < sum(map(len, train)) < 30e6  # megabytes of code: enough for a small quality benchmark
    assert any("class OrderedDict" in text for text in documents)  # collections/__init__.py
    files = stdlib_source_files()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert (stdlib / "test").is_dir() and (stdlib / "collections" / "__init__.py") in files
    for path in files:  # no tests, no installed packages
        parts = path.relative_to(stdlib).parts
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts) and not parts[-1].startswith("test_")
    splits = load_text_splits(TextSource(builtin_corpus="stdlib"))
    assert splits["validation"]["text"] == [text for text in held_out if text.strip()]
    with pytest.raises(ValueError, match="`builtin_corpus` must be one of"):
        TextSource(builtin_corpus="wikipedia")


def test_packing_concatenates_documents_with_eos_into_full_blocks(tokenizer):
    splits = load_text_splits(TextSource())
    blocks = pack_into_blocks(splits["validation"], tokenizer, block_size=16)
    documents = builtin_corpus("validation")
    stream = list(chain.from_iterable(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in documents))
    assert len(blocks) == len(stream) // 16  # one map batch: only the last partial block is dropped
    assert all(len(row) == 16 for row in blocks["input_ids"])
    assert list(chain.from_iterable(blocks["input_ids"])) == stream[: len(blocks) * 16]


def test_text_that_reads_like_a_special_token_is_packed_as_text(tokenizer):
    documents = Dataset.from_dict({"text": ["<s>struck</s> out", "a <pad> here"]})
    stream = list(chain.from_iterable(pack_into_blocks(documents, tokenizer, block_size=2)["input_ids"]))
    # The first special id is the first document's end, after all of its text; no text became a start or a pad.
    first_end = stream.index(tokenizer.eos_token_id)
    assert tokenizer.decode(stream[:first_end]) == "<s>struck</s> out"
    assert tokenizer.bos_token_id not in stream and tokenizer.pad_token_id not in stream


def write_formats(tmp_path, documents):
    text_file = tmp_path / "docs.txt"
    text_file.write_text("\n\n".join(documents) + "\n")
    json_file = tmp_path / "docs.jsonl"
    json_file.write_text("".join(json.dumps({"content": text, "n": i}) + "\n" for i, text in enumerate(documents)))
    parquet_file = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": documents}), parquet_file)
    return text_file, json_file, parquet_file


def test_text_json_and_parquet_files_give_the_same_documents(tmp_path):
    documents = [re.sub("\n+", "\n", text).strip() for text in DOCUMENTS]  # a blank line ends a .txt document
    text_file, json_file, parquet_file = write_formats(tmp_path, documents)
    held_out_every = 100 // 10
    expected_train = [text for i, text in enumerate(documents) if i % held_out_every]
    expected_validation = documents[::held_out_every]
    for path, column in ((text_file, "text"), (json_file, "content"), (parquet_file, "content")):
        source = TextSource(train_files=[str(path)], text_column=column, validation_split_percentage=10)
        splits = load_text_splits(source)
        assert [text.strip() for text in iter_texts(splits["train"], column)] == expected_train, path.suffix
        assert [text.strip() for text in iter_texts(splits["validation"], column)] == expected_validation


def test_streaming_gives_the_same_blocks_and_packing_is_cached(tmp_path, tokenizer):
    _, json_file, _ = write_formats(tmp_path, DOCUMENTS)
    source = TextSource(train_files=[str(json_file)], text_column="content")
    packed = pack_into_blocks(load_text_splits(source)["train"], tokenizer, 32, "content")
    streamed_source = TextSource(train_files=[str(json_file)], text_column="content", streaming=True)
    streamed = pack_into_blocks(load_text_splits(streamed_source)["train"], tokenizer, 32, "content")
    assert [row["input_ids"] for row in streamed] == packed["input_ids"]
    # File-backed data is packed once: the same call again reads the cached Arrow file.
    again = pack_into_blocks(load_text_splits(source)["train"], tokenizer, 32, "content")
    assert packed.cache_files and again.cache_files == packed.cache_files


def test_null_and_blank_documents_are_dropped(tmp_path):
    rows = [{"text": "first"}, {"text": None}, {"other": 1}, {"text": "  "}, {"text": "second"}, {"text": "third"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits = load_text_splits(TextSource(train_files=[str(path)], validation_split_percentage=50))
    # One row in two is held out before blank and null rows are dropped: rows 0, 2, 4 and rows 1, 3, 5.
    assert list(iter_texts(splits["validation"])) == ["first", "second"]
    assert list(iter_texts(splits["train"])) == ["third"]


@pytest.mark.parametrize(
    "contents, kwargs, error, match",
    [
        (None, {}, FileNotFoundError, "missing.txt"),
        ("", {}, ValueError, "empty.txt' is empty"),
        ("\n \n\t\n", {}, ValueError, "corpus is empty"),
        ("fine", {"text_column": "body"}, ValueError, "text_column"),
        ("fine", {"suffix": ".docx"}, ValueError, "unsupported extension"),
    ],
)
def test_bad_files_are_named_in_the_error(tmp_path, contents, kwargs, error, match):
    name = {None: "missing", "": "empty"}.get(contents, "data")
    path = tmp_path / f"{name}{kwargs.pop('suffix', '.txt')}"
    if contents is not None:
        path.write_text(contents)
    with pytest.raises(error, match=match):
        load_text_splits(TextSource(train_files=[str(path)], **kwargs))


def test_conflicting_sources_are_rejected():
    with pytest.raises(ValueError, match="either"):
        TextSource(train_files=["a.txt"], dataset_name="org/data")
    with pytest.raises(ValueError, match="validation_split_percentage"):
        TextSource(validation_split_percentage=0)
