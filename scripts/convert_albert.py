"""Convert an ALBERT checkpoint to AlbertAGPT: `albertagpt convert-albert`, as a script. `--help` lists the flags."""

from albertagpt.commands import convert_albert_main

if __name__ == "__main__":
    convert_albert_main()
