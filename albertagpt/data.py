"""Text corpora (built-in, local files, Hub data sets, streaming) and their packing into training blocks.

Every source becomes two splits, `train` and `validation`, each with one text column. Packing tokenizes
the documents, puts `</s>` after each, concatenates them and cuts the stream into rows of `block_size`
tokens (the remainder of each map batch is dropped), so no block needs padding.
"""

import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from datasets import Dataset, IterableDataset, load_dataset
from transformers import PreTrainedTokenizerBase

from .cli import OnResume, recipe_field

# `load_dataset` builder for each file extension we read.
FILE_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
}
BUILTIN_HELD_OUT_EVERY = 10  # every tenth built-in document (in sorted order, starting with the first) is held out
BUILTIN_CORPORA = ("docs", "stdlib")
# Folders of the standard library that hold its tests (or third-party packages), not library source.
STDLIB_EXCLUDED_FOLDERS = ("site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__")
PACKING_BATCH_SIZE = 1000  # documents tokenized and packed together; only the remainder of each batch is lost

AnyDataset = Dataset | IterableDataset


def builtin_corpus(split: str = "train", corpus: str = "docs") -> list[str]:
    """A corpus every Python ships, one document per topic or file; offline, and fixed by the Python version.

    - `"docs"`: the English text of Python's own documentation (`pydoc_data.topics`), one document per topic
      (about 1.3 MB; topics in alphabetical order, each text once, two topics share theirs).
    - `"stdlib"`: the standard library's own Python source files without its tests (about 12 MB; one document per
      `.py` file, in order of relative path; folders named `test`, `tests` or `idle_test`, files named
      `test_*.py` and installed packages left out).

    Every tenth document, starting with the first, is the `validation` split (held out by topic or by file), the
    rest is `train`.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"`split` must be 'train' or 'validation', got {split!r}.")
    if corpus not in BUILTIN_CORPORA:
        raise ValueError(f"`builtin_corpus` must be one of {BUILTIN_CORPORA}, got {corpus!r}.")
    texts = python_docs() if corpus == "docs" else stdlib_sources()
    held_out = split == "validation"
    return [text for index, text in enumerate(texts) if (index % BUILTIN_HELD_OUT_EVERY == 0) == held_out]


def python_docs() -> list[str]:
    from pydoc_data.topics import topics

    return list(dict.fromkeys(topics[name] for name in sorted(topics)))


def stdlib_source_files() -> list[Path]:
    """The standard library's `.py` files without its tests, in order of relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in STDLIB_EXCLUDED_FOLDERS]
        files += [Path(folder) / name for name in names if name.endswith(".py") and not name.startswith("test_")]
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def stdlib_sources() -> list[str]:
    texts = (path.read_text(encoding="utf-8", errors="replace") for path in stdlib_source_files())
    return [text for text in texts if text.strip()]


@dataclass
class TextSource:
    """Where the text comes from: local files, a Hub data set, or (neither given) the built-in corpus."""

    # Every field of the source takes effect on resume: other text is other training data.
    train_files: list[str] | None = recipe_field(
        None,
        on_resume=OnResume.TAKES_EFFECT,
        help="Local .txt/.md (one document per paragraph), .json/.jsonl or .parquet files.",
    )
    dataset_name: str | None = recipe_field(
        None, on_resume=OnResume.TAKES_EFFECT, help="A data set on the Hugging Face Hub."
    )
    dataset_config_name: str | None = recipe_field(
        None, on_resume=OnResume.TAKES_EFFECT, help="Its configuration name."
    )
    text_column: str = recipe_field("text", on_resume=OnResume.TAKES_EFFECT, help="Column holding the documents.")
    streaming: bool = recipe_field(
        False, on_resume=OnResume.TAKES_EFFECT, help="Read the data lazily instead of preparing it first."
    )
    validation_split_percentage: int = recipe_field(
        5, on_resume=OnResume.TAKES_EFFECT, help="Held-out share of documents when the source has no validation split."
    )
    builtin_corpus: str = recipe_field(
        "docs",
        on_resume=OnResume.TAKES_EFFECT,
        help="With neither files nor a data set: docs (Python's documentation) or stdlib (its sources).",
    )

    def __post_init__(self) -> None:
        if self.train_files and self.dataset_name:
            raise ValueError("Give either `train_files` or `dataset_name`, not both.")
        if self.dataset_config_name and not self.dataset_name:
            raise ValueError("`dataset_config_name` needs `dataset_name`.")
        if self.builtin_corpus not in BUILTIN_CORPORA:
            raise ValueError(f"`builtin_corpus` must be one of {BUILTIN_CORPORA}, got {self.builtin_corpus!r}.")
        if not 0 < self.validation_split_percentage <= 50:
            raise ValueError(
                f"`validation_split_percentage` must lie in (0, 50], got {self.validation_split_percentage}."
            )


def check_files(paths: list[str]) -> str:
    """Returns the `load_dataset` builder for `paths`, after checking that each exists and is not empty."""
    builders = set()
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Training file {path!r} does not exist.")
        if os.path.getsize(path) == 0:
            raise ValueError(f"Training file {path!r} is empty.")
        suffix = Path(path).suffix.lower()
        if suffix not in FILE_BUILDERS:
            raise ValueError(
                f"Training file {path!r} has an unsupported extension; use one of {sorted(FILE_BUILDERS)}."
            )
        builders.add(FILE_BUILDERS[suffix])
    if len(builders) > 1:
        raise ValueError(f"`train_files` mix formats ({sorted(builders)}); give files of one format.")
    return builders.pop()


def held_out_every(validation_split_percentage: int) -> int:
    """A source without a validation split gives up one document in this many (about the percentage)."""
    return round(100 / validation_split_percentage)


def load_text_splits(source: TextSource) -> dict[str, AnyDataset]:
    """`{"train": ..., "validation": ...}`, each holding only `source.text_column`, blank and null documents removed.

    A source without a validation split gives up one document in `held_out_every(percentage)`, which works
    the same way for streamed data, whose length is unknown.
    """
    column = source.text_column
    if source.train_files:
        builder = check_files(source.train_files)
        extra = {"sample_by": "paragraph"} if builder == "text" else {}
        splits = load_dataset(builder, data_files={"train": source.train_files}, streaming=source.streaming, **extra)
        what = f"train_files {source.train_files}"
    elif source.dataset_name:
        splits = load_dataset(source.dataset_name, source.dataset_config_name, streaming=source.streaming)
        what = f"dataset {source.dataset_name!r}"
    else:
        splits = {
            split: Dataset.from_dict({column: builtin_corpus(split, source.builtin_corpus)})
            for split in ("train", "validation")
        }
        if source.streaming:
            splits = {split: dataset.to_iterable_dataset() for split, dataset in splits.items()}
        what = f"the built-in corpus {source.builtin_corpus!r}"

    if "train" not in splits:
        raise ValueError(f"{what} has no 'train' split (it has {sorted(splits)}).")
    train = splits["train"]
    if train.column_names is not None and column not in train.column_names:
        raise ValueError(f"`text_column` {column!r} is not a column of {what}; its columns are {train.column_names}.")
    if "validation" in splits:
        validation = splits["validation"]
    else:
        every = held_out_every(source.validation_split_percentage)
        validation = train.filter(lambda _, index: index % every == 0, with_indices=True)
        train = train.filter(lambda _, index: index % every != 0, with_indices=True)

    result = {}
    for name, dataset in (("train", train), ("validation", validation)):
        dataset = dataset.select_columns([column]).filter(lambda example: bool((example[column] or "").strip()))
        if is_empty(dataset):
            raise ValueError(f"The {name} split of {what} holds no text in column {column!r}: the corpus is empty.")
        result[name] = dataset
    return result


def is_empty(dataset: AnyDataset) -> bool:
    if isinstance(dataset, IterableDataset):
        return next(iter(dataset.take(1)), None) is None
    return len(dataset) == 0


def iter_texts(dataset: AnyDataset, text_column: str = "text") -> Iterator[str]:
    """The documents of a split, in order (what `train_tokenizer` reads)."""
    for batch in dataset.iter(batch_size=PACKING_BATCH_SIZE):
        yield from batch[text_column]


def pack_into_blocks(
    dataset: AnyDataset, tokenizer: PreTrainedTokenizerBase, block_size: int, text_column: str = "text"
) -> AnyDataset:
    """Tokenized, `</s>`-separated documents cut into rows of exactly `block_size` ids (column `input_ids`).

    For file-backed data `map` caches the result under `$HF_HOME/datasets`, and the next run with the same
    tokenizer and `block_size` reuses it instead of tokenizing again.
    """
    if block_size < 2:
        raise ValueError(f"`block_size` must be at least 2 to predict anything, got {block_size}.")
    eos = [tokenizer.eos_token_id]

    def pack(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        # Whole documents, cut into blocks below: a tokenizer's `model_max_length` does not apply (`verbose=False`
        # keeps it from warning about every longer document). Text that reads like a special token (HTML's `<s>`,
        # a literal `</s>`) is encoded as text: else it would end a document mid-way, or become a pad that the
        # collator leaves out of the loss.
        encoded = tokenizer(batch[text_column], add_special_tokens=False, split_special_tokens=True, verbose=False)
        stream = list(chain.from_iterable(document + eos for document in encoded["input_ids"]))
        usable = len(stream) - len(stream) % block_size
        return {"input_ids": [stream[start : start + block_size] for start in range(0, usable, block_size)]}

    kwargs = {} if isinstance(dataset, IterableDataset) else {"desc": f"Packing into blocks of {block_size}"}
    return dataset.map(pack, batched=True, batch_size=PACKING_BATCH_SIZE, remove_columns=[text_column], **kwargs)


__all__ = [
    "TextSource",
    "builtin_corpus",
    "check_files",
    "held_out_every",
    "iter_texts",
    "load_text_splits",
    "pack_into_blocks",
]
