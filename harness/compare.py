"""`python -m harness.compare RECIPE_A RECIPE_B ... [--set key=value] [--seeds 0,1,2] [--checkpoint A=PATH]`

The command line of `harness.workflows.comparison`: that module says what is done, how it is measured and
which files are written.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import command_parser, run_command
from harness.errors import HarnessError

EXAMPLES = """examples:
  python -m harness.compare recipes/mnist_mlp.yaml recipes/mnist.yaml --set trainer.epochs=1
  python -m harness.compare recipes/mnist_mlp.yaml recipes/mnist.yaml --seeds 0,1,2 --set trainer.epochs=2
  python -m harness.compare recipes/mnist_mlp.yaml recipes/mnist.yaml \\
      --checkpoint mnist=runs/mnist/<time>/checkpoints/best.pt
  python -m harness.compare recipes/shakespeare_char.yaml gpt_2layer.yaml --set trainer.max_steps=200
      (language models: per character; pairs by a paired bootstrap over the validation windows)
  tensorboard --logdir runs/compare"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("compare", "Train or load several models and compare them on one table.", EXAMPLES)
    parser.add_argument("recipes", nargs="+", help="YAML recipes, e.g. recipes/mnist_mlp.yaml recipes/mnist.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="an override for every recipe (repeatable), e.g. --set trainer.epochs=1")
    parser.add_argument("--seeds", metavar="S1,S2,...", help="train each recipe once per seed (default: trainer.seed)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="MODEL=PATH",
                        help="score this checkpoint instead of training MODEL (the recipe file's stem)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> int:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.workflows.comparison import compare  # noqa: PLC0415

        seeds = None
        if args.seeds is not None:
            try:
                seeds = [int(s) for s in args.seeds.split(",")]
            except ValueError:
                raise HarnessError(f"--seeds {args.seeds!r}: expected integers separated by commas, "
                                   "e.g. 0,1,2") from None
        checkpoints = {}
        for item in args.checkpoint:
            label, sep, path = item.partition("=")
            if not sep or not label or not path:
                raise HarnessError(f"--checkpoint {item!r}: expected MODEL=PATH, e.g. mnist=runs/mnist/<time>/"
                                   "checkpoints/best.pt")
            checkpoints[label] = path
        result = compare(args.recipes, args.overrides, seeds=seeds, checkpoints=checkpoints)
        if result["failed"]:
            print(f"error: {len(result['failed'])} of {len(result['runs'])} runs failed (see the table's notes); "
                  f"the others' figures are in {result['compare_dir']}/compare.md", file=sys.stderr)
            return 1
        return 0

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
