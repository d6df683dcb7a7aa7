"""Publish a trained output folder to the Hub: `albertagpt push`, as a script. `--help` lists the flags."""

from albertagpt.commands import push_main

if __name__ == "__main__":
    push_main()
