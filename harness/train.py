"""`python -m harness.train RECIPE [key=value ...] [--resume CHECKPOINT]`: train, validate, test.

Writes a run folder runs/<name>/<timestamp>/ with config.yaml, history.jsonl, summary.json,
TensorBoard events and checkpoints/{last,best}.pt. `train(recipe)` is the same thing from Python.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.cli import run_command

EXAMPLES = """examples:
  python -m harness.train recipes/mnist.yaml
  python -m harness.train recipes/mnist.yaml optim.lr=3e-3 trainer.epochs=5
  python -m harness.train runs/mnist/<time>/config.yaml --resume runs/mnist/<time>/checkpoints/last.pt
  tensorboard --logdir runs"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.train", description=__doc__.splitlines()[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/mnist.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-3 trainer.epochs=5")
    parser.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoints/last.pt")
    return parser.parse_args(argv)


def train(recipe: Any, recipe_path: str | Path | None = None, resume: str | Path | None = None) -> dict[str, Any]:
    """Train a validated `Recipe` end to end; returns the summary (also written to summary.json)."""
    from harness.run import Run

    return Run(recipe, recipe_path=recipe_path, resume=resume).execute()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        from harness.config import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        train(recipe, recipe_path=args.recipe, resume=args.resume)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
