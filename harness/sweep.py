"""`python -m harness.sweep RECIPE [key=value ...] --grid ... | --random N ... | --optuna N`: hyperparameter search.

The command line of `harness.workflows.search`: that module says what is done, how it is measured and
which files are written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harness.cli import command_parser, run_command
from harness.errors import HarnessError

EXAMPLES = """examples:
  python -m harness.sweep recipes/mnist_mlp.yaml trainer.epochs=1 --grid optim.lr=1e-3,3e-3 --grid optim.name=sgd,adam
  python -m harness.sweep recipes/mnist_mlp.yaml --random 8 --range optim.lr=1e-4:1e-1:log \\
      --range optim.weight_decay=0:1e-3
  python -m harness.sweep recipes/mnist_mlp.yaml --optuna 20 --range optim.lr=1e-4:1e-1:log --grid optim.name=adam,sgd
  tensorboard --logdir runs/mnist_mlp-sweep"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("sweep", __doc__.splitlines()[0], EXAMPLES)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/mnist_mlp.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every trial, e.g. trainer.epochs=1")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=A,B,...",
                        help="values to try for a key (repeatable; a grid is their cartesian product)")
    parser.add_argument("--range", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                        help="a range for --random / --optuna (repeatable); ints when both ends are ints")
    search = parser.add_mutually_exclusive_group()
    search.add_argument("--random", type=int, metavar="N", help="random search: N seeded draws")
    search.add_argument("--optuna", type=int, metavar="N", help="Optuna TPE search with pruning: N trials")
    parser.add_argument("--seed", type=int, help="seed of the search itself (default: trainer.seed)")
    return parser.parse_intermixed_args(argv)  # options may come before or after the overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.workflows.search import Range, parse_grid, parse_range, sweep  # noqa: PLC0415

        grid: dict[str, list[Any]] = {}
        ranges: dict[str, Range] = {}
        for item in args.grid:
            key, values = parse_grid(item)
            if key in grid:
                raise HarnessError(f"--grid {key}: given twice; list every value in one --grid")
            grid[key] = values
        for item in args.range:
            key, r = parse_range(item)
            if key in ranges:
                raise HarnessError(f"--range {key}: given twice")
            ranges[key] = r
        sweep(args.recipe, args.overrides, grid=grid, ranges=ranges, random=args.random, optuna=args.optuna,
              seed=args.seed)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
