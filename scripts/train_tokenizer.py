"""Train a byte-level BPE tokenizer with `<pad>`, `<s>`, `</s>` and save it for `AutoTokenizer.from_pretrained`.

    python scripts/train_tokenizer.py --output_dir DIR [--train_files F ...] [--dataset_name N
        [--dataset_config_name C]] [--text_column text] [--vocab_size 8000]

With no files and no data set it trains on the built-in corpus (Python's documentation). Only the training
split is read; the held-out documents stay unseen.
"""

import sys

from albertagpt.cli import parse_recipe
from albertagpt.tokenizer import TokenizerRecipe, train_tokenizer_from_source


def main(argv: list[str] | None = None) -> None:
    try:
        recipe = parse_recipe(TokenizerRecipe, argv, description=__doc__)
        tokenizer = train_tokenizer_from_source(recipe)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(f"Saved a tokenizer with {len(tokenizer)} tokens to {recipe.output_dir}")


if __name__ == "__main__":
    main()
