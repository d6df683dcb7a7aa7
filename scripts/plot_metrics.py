"""Draw the loss curve of a training run (training loss per logged step, held-out loss per evaluation).

python scripts/plot_metrics.py OUTPUT_DIR/metrics.jsonl docs/loss_curve.png
"""

import argparse
from pathlib import Path

from albertagpt.hub import plot_loss_curve, read_training_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="metrics.jsonl written by scripts/train.py")
    parser.add_argument("output", type=Path, help="PNG file to write")
    args = parser.parse_args()
    if not args.metrics.is_file():
        parser.error(f"{args.metrics} does not exist")
    try:
        metrics = read_training_metrics(args.metrics)
    except ValueError as error:
        parser.error(str(error))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plot_loss_curve(metrics, args.output)
    print(
        f"Wrote {args.output}: {len(metrics.train_steps)} training points, held-out perplexity "
        f"{metrics.perplexities[0]:.2f} at step {metrics.eval_steps[0]} -> {metrics.final_perplexity:.2f} "
        f"at step {metrics.eval_steps[-1]}"
    )


if __name__ == "__main__":
    main()
