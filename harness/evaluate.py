"""`python -m harness.evaluate RECIPE --checkpoint PATH [--split test|val] [--speed] [a.b=c ...]`: score a checkpoint.

The command line of `harness.workflows.evaluation`: that module says what is done, how it is measured and
which files are written.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import command_parser, run_command
from harness.recipe.choices import SPLITS

EXAMPLES = """examples:
  python -m harness.evaluate recipes/mnist.yaml --checkpoint runs/mnist/<time>/checkpoints/best.pt
  python -m harness.evaluate recipes/mnist.yaml --checkpoint runs/mnist/<time>/checkpoints/last.pt --split val
  python -m harness.evaluate recipes/mnist.yaml --checkpoint runs/mnist/<time>/checkpoints/best.pt --speed
  python -m harness.evaluate recipes/mnist.yaml --checkpoint CKPT trainer.device=cpu data.eval_batch_size=500"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("evaluate", __doc__.splitlines()[0], EXAMPLES)
    parser.add_argument("recipe", help="the YAML recipe the checkpoint was trained with, e.g. recipes/mnist.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.device=cpu")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="e.g. runs/mnist/<time>/checkpoints/best.pt")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="test (default) or val: the recipe's held-out validation images")
    parser.add_argument("--speed", action="store_true",
                        help="also time inference at batch size 1 and data.eval_batch_size")
    # intermixed: overrides may come before or after the options
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.recipe.schema import load_recipe  # noqa: PLC0415
        from harness.workflows.evaluation import evaluate  # noqa: PLC0415

        recipe = load_recipe(args.recipe, args.overrides)
        evaluate(recipe, args.checkpoint, args.split, speed=args.speed)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
