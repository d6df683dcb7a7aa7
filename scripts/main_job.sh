#!/usr/bin/env bash
# The main job, on a fresh machine that has only Python 3.10+: make a virtual environment, install torch and
# this package, then train a byte-level BPE tokenizer and a tiny AlbertAGPT on the built-in corpus (Python's
# own documentation), report held-out perplexity before and after, save the model to runs/main_job and print
# a generated sample. About 5 minutes of training on 2 CPU cores.
#   bash scripts/main_job.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e .
rm -rf runs/main_job  # this job's own output: a fresh run, so "before" really is before training
.venv/bin/python scripts/train.py --config configs/train/tiny.yaml --output_dir runs/main_job
.venv/bin/python scripts/plot_metrics.py runs/main_job/metrics.jsonl runs/main_job/loss_curve.png
