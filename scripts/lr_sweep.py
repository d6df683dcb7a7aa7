"""The LayerNorm lab's sweep: `albertagpt sweep`, as a script. `--help` lists the flags."""

from albertagpt.commands import sweep_main

if __name__ == "__main__":
    sweep_main()
