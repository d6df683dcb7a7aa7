"""Convert an ALBERT checkpoint (a folder or Hub id) and its tokenizer into an AlbertAGPT causal-LM folder."""

import argparse

from albertagpt.convert import convert_albert


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--albert", required=True, help="ALBERT folder or Hub id, e.g. albert/albert-base-v2")
    parser.add_argument("--output_dir", required=True, help="where to save the AlbertAGPT model and tokenizer")
    args = parser.parse_args()
    print(f"Saved AlbertAGPT converted from {args.albert} to {convert_albert(args.albert, args.output_dir)}")


if __name__ == "__main__":
    main()
