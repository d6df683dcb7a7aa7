"""Publish a trained output folder as a Hugging Face Hub model repo (weights, tokenizer, remote code, model card).

    python scripts/push_to_hub.py --model_dir OUT --repo_id ORG/NAME [--private] [--revision BRANCH]
        [--commit_message MSG] [--dry_run DIR] [--max_shard_size 5GB]

Uploads with the token of `hf auth login` or HF_TOKEN; --dry_run DIR only writes the repo folder to DIR.
"""

import argparse

from albertagpt.hub import DEFAULT_MAX_SHARD_SIZE, NotLoggedInError, build_repo_folder, push_trained_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="output_dir of scripts/train.py")
    parser.add_argument("--repo_id", required=True, help="ORG/NAME of the Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing; default main)")
    parser.add_argument("--commit_message", default=None, help="default names the step and held-out perplexity")
    parser.add_argument("--dry_run", metavar="DIR", default=None, help="write the repo folder to DIR; upload nothing")
    parser.add_argument(
        "--max_shard_size", default=DEFAULT_MAX_SHARD_SIZE, help="shard model.safetensors above this size (e.g. 2GB)"
    )
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    try:
        if args.dry_run is not None:
            folder = build_repo_folder(args.model_dir, args.repo_id, args.dry_run, args.max_shard_size)
            print(f"Wrote the repo folder for {args.repo_id} to {folder}; nothing was uploaded.")
        else:
            commit = push_trained_model(
                args.model_dir,
                args.repo_id,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
                max_shard_size=args.max_shard_size,
            )
            print(f"Uploaded {args.model_dir} to {commit.commit_url}")
    except (ValueError, NotLoggedInError) as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
