"""Pretrain AlbertAGPT with Accelerate: `albertagpt train` as a script, for `accelerate launch scripts/train.py`.
`--help` lists the flags."""

from albertagpt.commands import train_main

if __name__ == "__main__":
    train_main()
