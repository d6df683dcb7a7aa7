"""Train a byte-level BPE tokenizer with `tokenizers` and wrap it as a transformers fast tokenizer.

Byte-level BPE starts from the 256 byte symbols, so every Unicode string encodes without an unknown token
and decodes back to exactly the same string: no normalizer, no prefix space, no clean-up of spaces.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .data import TextSource, iter_texts, load_text_splits

# Ids 0, 1, 2, matching the model config defaults `pad_token_id`, `bos_token_id`, `eos_token_id`.
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2, show_progress: bool = False
) -> PreTrainedTokenizerFast:
    """Learns at most `vocab_size` tokens (special tokens and the 256 bytes included) from `texts`.

    Fewer tokens result when no pair occurs `min_frequency` times any more; the model takes its
    `vocab_size` from `len(tokenizer)`.
    """
    minimum = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < minimum:
        raise ValueError(f"`vocab_size` must be at least {minimum} (3 special tokens + 256 bytes), got {vocab_size}.")
    if min_frequency < 1:
        raise ValueError(f"`min_frequency` must be at least 1 (a pair must occur to be merged), got {min_frequency}.")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,  # decoding must give back the exact text
    )


@dataclass
class TokenizerRecipe(TextSource):
    """What `albertagpt train-tokenizer` accepts; with no files and no data set it uses the built-in corpus."""

    output_dir: str = field(default="tokenizer", metadata={"help": "Folder for `AutoTokenizer.from_pretrained`."})
    vocab_size: int = field(default=8000, metadata={"help": "Largest vocabulary, special tokens included."})
    min_frequency: int = field(default=2, metadata={"help": "Merge only pairs seen at least this often."})


def train_tokenizer_from_source(recipe: TokenizerRecipe) -> PreTrainedTokenizerFast:
    """Trains on the training split of `recipe`'s text (the held-out part stays unseen) and saves it."""
    train_split = load_text_splits(recipe)["train"]
    tokenizer = train_tokenizer(iter_texts(train_split, recipe.text_column), recipe.vocab_size, recipe.min_frequency)
    tokenizer.save_pretrained(recipe.output_dir)
    return tokenizer


__all__ = ["SPECIAL_TOKENS", "TokenizerRecipe", "train_tokenizer", "train_tokenizer_from_source"]
