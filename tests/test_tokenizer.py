"""The byte-level BPE tokenizer: exact round trips of any Unicode, special tokens, saving, the script."""

import json
import random
import subprocess
import sys

import pytest
from helpers import REPO_ROOT
from transformers import AutoTokenizer

from albertagpt.data import builtin_corpus
from albertagpt.tokenizer import TokenizerRecipe, train_tokenizer, train_tokenizer_from_source

# Code point ranges a fuzzer should hit: ASCII with controls, Latin-1, combining marks, Greek/Cyrillic,
# Hebrew/Arabic (right-to-left), CJK, emoji and symbols beyond the BMP, private use, odd whitespace.
CODE_POINT_RANGES = [
    (0x00, 0x7F),
    (0x80, 0xFF),
    (0x300, 0x36F),
    (0x370, 0x4FF),
    (0x590, 0x6FF),
    (0x4E00, 0x4FFF),
    (0x1F300, 0x1F6FF),
    (0xE000, 0xE0FF),
    (0x10000, 0x1007F),
]
ODD_WHITESPACE = [" ", "  ", "\n", "\r\n", "\t", "\u00a0", "\u2028", "\u3000", "\ufeff", "\u200b"]


def random_text(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(0, 40)):
        kind = rng.random()
        if kind < 0.3:
            pieces.append(rng.choice(ODD_WHITESPACE))
        elif kind < 0.5:
            pieces.append(rng.choice(["def ", "the ", "Python", " is", "\u00e9", "e\u0301", "<s", "/s>", "'''"]))
        else:
            low, high = rng.choice(CODE_POINT_RANGES)
            pieces.append(chr(rng.randint(low, high)))
    return "".join(pieces)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(builtin_corpus("train")[:20], vocab_size=400)


def test_round_trips_random_unicode_exactly(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    rng = random.Random(0)
    texts = [random_text(rng) for _ in range(500)] + ["", " ", "\n\n", "  leading and trailing  ", "\x00\x7f"]
    for text in texts:
        for tok in (tokenizer, reloaded):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text, (text, ids)
            assert tok.unk_token_id is None or tok.unk_token_id not in ids  # bytes cover everything


def test_special_tokens_match_the_model_defaults_and_merges_compress(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<pad>", "<s>", "</s>"]) == [0, 1, 2]
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert len(tokenizer) == 400  # 3 special + 256 bytes + 141 merges learned from 20 documents
    held_out = "\n".join(builtin_corpus("validation"))
    n_tokens = len(tokenizer(held_out, add_special_tokens=False)["input_ids"])
    # 141 merges already shorten unseen English text well below one token per byte.
    assert n_tokens < 0.6 * len(held_out.encode())


def test_vocab_size_below_the_byte_alphabet_and_a_zero_min_frequency_are_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["some text"], vocab_size=100)
    with pytest.raises(ValueError, match="`min_frequency` must be at least 1"):
        train_tokenizer(["some text"], vocab_size=300, min_frequency=0)


def test_trains_on_the_builtin_training_split_by_default(tmp_path):
    tokenizer = train_tokenizer_from_source(TokenizerRecipe(output_dir=str(tmp_path), vocab_size=300))
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab() and len(reloaded) == 300
    # Trained on the training split only: the same as training on it directly.
    direct = train_tokenizer(builtin_corpus("train"), vocab_size=300)
    assert direct.get_vocab() == tokenizer.get_vocab()


def test_script_trains_on_json_lines_with_a_text_column(tmp_path):
    documents = builtin_corpus("train")[:30]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"body": text, "id": i}) + "\n" for i, text in enumerate(documents)))
    out = tmp_path / "tok"
    completed = subprocess.run(
        [sys.executable, "scripts/train_tokenizer.py", "--output_dir", str(out), "--train_files", str(data)]
        + ["--text_column", "body", "--vocab_size", "320"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    loaded = AutoTokenizer.from_pretrained(out)
    assert loaded.is_fast and len(loaded) == 320
    assert [loaded.pad_token, loaded.bos_token, loaded.eos_token] == ["<pad>", "<s>", "</s>"]
    sample = documents[3][:500]
    assert loaded.decode(loaded(sample)["input_ids"]) == sample
