"""Benchmark AlbertAGPT against transformers' GPT-2 at the same shape (see docs/benchmarks.md).

python scripts/benchmark.py            # hidden 512, 8 layers, vocab 8192, seq 256, batch 8; CPU, fp32
python scripts/benchmark.py --quick    # every measurement on a tiny shape, in seconds
python scripts/benchmark.py --device cuda --dtype bfloat16 --compile --hidden_size 768 --num_layers 12 \
    --num_heads 12 --intermediate_size 3072 --vocab_size 50304 --seq_len 1024
"""

import argparse
from dataclasses import asdict, fields

from albertagpt.benchmark import (
    QUICK_SETTINGS,
    QUICK_SHAPE,
    BenchmarkSettings,
    BenchmarkShape,
    check_output_paths,
    check_run_is_possible,
    format_scaling_tables,
    format_table,
    plot_results,
    run_benchmark,
    save_results,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (training, static cache)")
    parser.add_argument("--quick", action="store_true", help="tiny shape and few steps (seconds; for smoke tests)")
    for field in fields(BenchmarkShape):
        parser.add_argument(
            f"--{field.name}",
            type=int,
            help=f"default {field.default} ({getattr(QUICK_SHAPE, field.name)} with --quick)",
        )
    parser.add_argument("--train_steps", type=int, help="timed training steps per model")
    parser.add_argument(
        "--generate_repeats", type=int, help="timed generate() calls per model and batch size (5; 2 with --quick)"
    )
    parser.add_argument(
        "--output", help="default benchmarks/results.json (benchmarks/results_quick.json with --quick)"
    )
    parser.add_argument("--plot", help="default docs/benchmark_<device>.png; none with --quick unless given")
    args = parser.parse_args()

    shape = QUICK_SHAPE if args.quick else BenchmarkShape()
    shape_overrides = {
        f.name: getattr(args, f.name) for f in fields(BenchmarkShape) if getattr(args, f.name) is not None
    }
    settings = QUICK_SETTINGS if args.quick else BenchmarkSettings()
    settings_overrides = {"device": args.device, "dtype": args.dtype, "compile": args.compile}
    for name in ("train_steps", "generate_repeats"):
        if getattr(args, name) is not None:
            settings_overrides[name] = getattr(args, name)
    output = args.output or ("benchmarks/results_quick.json" if args.quick else "benchmarks/results.json")
    plot = args.plot or (None if args.quick else f"docs/benchmark_{args.device}.png")
    try:
        shape = BenchmarkShape(**{**asdict(shape), **shape_overrides})
        settings = BenchmarkSettings(**{**asdict(settings), **settings_overrides})
        check_run_is_possible(shape, settings)
        check_output_paths(output, plot)
    except ValueError as error:
        parser.error(str(error))

    results = run_benchmark(shape, settings)
    print(format_table(results))
    print()
    print(format_scaling_tables(results))
    print(f"results written to {save_results(results, output)}")
    if plot:
        print(f"plot written to {plot_results(results, plot)}")


if __name__ == "__main__":
    main()
