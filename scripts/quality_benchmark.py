"""The quality benchmark against GPT-2: `albertagpt quality`, as a script. `--help` lists the flags."""

from albertagpt.commands import quality_main

if __name__ == "__main__":
    quality_main()
