"""`python -m harness.train RECIPE [key=value ...] [--resume CHECKPOINT]`: train, validate, test.

Writes a run folder runs/<name>/<timestamp>/ with config.yaml, history.jsonl, summary.json,
TensorBoard events and checkpoints/{last,best}.pt. `harness.workflows.training.train(recipe)` is the
same thing from Python.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import command_parser, run_command

EXAMPLES = """examples:
  python -m harness.train recipes/mnist.yaml
  python -m harness.train recipes/mnist.yaml optim.lr=3e-3 trainer.epochs=5
  python -m harness.train runs/mnist/<time>/config.yaml --resume runs/mnist/<time>/checkpoints/last.pt
  tensorboard --logdir runs"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("train", __doc__.splitlines()[0], EXAMPLES)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/mnist.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-3 trainer.epochs=5")
    parser.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoints/last.pt")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.recipe.schema import load_recipe  # noqa: PLC0415
        from harness.workflows.training import train  # noqa: PLC0415

        recipe = load_recipe(args.recipe, args.overrides)
        train(recipe, recipe_path=args.recipe, resume=args.resume)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
