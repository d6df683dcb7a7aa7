"""The speed benchmark against GPT-2: `albertagpt benchmark`, as a script. `--help` lists the flags."""

from albertagpt.commands import benchmark_main

if __name__ == "__main__":
    benchmark_main()
