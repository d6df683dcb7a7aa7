"""Draw a training run's loss curve: `albertagpt plot`, as a script. `--help` lists the flags."""

from albertagpt.commands import plot_main

if __name__ == "__main__":
    plot_main()
