"""Warm start from ALBERT: turn an ALBERT checkpoint and its tokenizer into a folder that loads as AlbertAGPT.

The weight mapping itself lives in `modeling_albertagpt.py` (`ALBERT_TO_ALBERTAGPT`, `from_albert`), so that it
travels with the remote code; this module adds what a saved folder needs beyond the model: the tokenizer.
"""

import os
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import is_sentencepiece_available

from .modeling_albertagpt import AlbertAGPTForCausalLM


def load_albert_tokenizer(albert: str | os.PathLike) -> PreTrainedTokenizerBase:
    """ALBERT's tokenizer set up as this package's causal LMs use theirs: it no longer wraps each text in
    `[CLS] ... [SEP]`, so a prompt is not closed by `[SEP]` (the `eos_token`, which training puts between documents).
    """
    try:
        return AutoTokenizer.from_pretrained(albert, add_bos_token=False, add_eos_token=False)
    except (ImportError, ValueError) as error:
        if is_sentencepiece_available():
            raise
        # Checkpoints without a `tokenizer.json` ship only `spiece.model`, which transformers reads with sentencepiece.
        raise ImportError(
            f"Could not load the tokenizer of {str(albert)!r} without sentencepiece (its tokenizer may be only a "
            "`spiece.model`): install it with `pip install 'albertagpt[albert]'`."
        ) from error


def convert_albert(albert: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Converts the ALBERT masked LM at `albert` (folder or Hub id) and saves it with its tokenizer in `output_dir`.

    The folder then loads with `AutoTokenizer.from_pretrained` and `AutoModelForCausalLM.from_pretrained` (with
    `trust_remote_code=True` where the package is not installed), and continues pretraining as a `model_config`.
    """
    tokenizer = load_albert_tokenizer(albert)  # first: a missing dependency should not wait for the weights
    model = AlbertAGPTForCausalLM.from_albert(albert)
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.model_max_length = model.config.max_position_embeddings  # `truncation=True` stops at ALBERT's positions
    tokenizer.save_pretrained(output_dir)
    return output_dir
