"""`python -m harness.lr_find RECIPE [key=value ...] [--start 1e-7 --end 10 --steps 200]`: pick a learning rate.

The command line of `harness.workflows.lr_range`: that module says what is done, how it is measured and
which files are written.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import command_parser, run_command

EXAMPLES = """examples:
  python -m harness.lr_find recipes/mnist.yaml
  python -m harness.lr_find recipes/mnist_mlp.yaml --start 1e-6 --end 1 --steps 100
  python -m harness.lr_find recipes/mnist.yaml optim.name=sgd data.batch_size=256"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("lr_find", __doc__.splitlines()[0], EXAMPLES)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/mnist.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.batch_size=256")
    parser.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    parser.add_argument("--end", type=float, default=10.0, help="last learning rate (default 10)")
    parser.add_argument("--steps", type=int, default=200,
                        help="optimizer steps at most (default 200); each takes trainer.accumulate_grad_batches "
                             "batches, as training does")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.recipe.schema import load_recipe  # noqa: PLC0415
        from harness.workflows.lr_range import lr_find  # noqa: PLC0415

        recipe = load_recipe(args.recipe, args.overrides)
        lr_find(recipe, args.recipe, start_lr=args.start, end_lr=args.end, steps=args.steps,
                overrides=args.overrides)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
