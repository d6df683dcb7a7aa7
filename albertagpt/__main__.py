"""`python -m albertagpt COMMAND ...`, the same as the `albertagpt` command."""

from .commands import main

if __name__ == "__main__":
    main()
