"""Train a tokenizer: `albertagpt train-tokenizer`, as a script. `--help` lists the flags."""

from albertagpt.commands import train_tokenizer_main

if __name__ == "__main__":
    train_tokenizer_main()
