"""`python -m harness.cv RECIPE --folds K [key=value ...]`: stratified K-fold cross-validation.

The command line of `harness.workflows.cross_validation`: that module says what is done, how it is measured and
which files are written.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import command_parser, run_command

EXAMPLES = """examples:
  python -m harness.cv recipes/mnist_mlp.yaml --folds 5
  python -m harness.cv recipes/mnist.yaml --folds 3 trainer.epochs=2
  python -m harness.cv runs/mnist-cv/<time>/config.yaml --folds 3 --resume runs/mnist-cv/<time>
  tensorboard --logdir runs/mnist_mlp-cv"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("cv", __doc__.splitlines()[0], EXAMPLES)
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/mnist_mlp.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=2")
    parser.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds, >= 2 (default 5)")
    parser.add_argument("--resume", metavar="CV_DIR",
                        help="finish an interrupted cross-validation in its folder (recipe: CV_DIR/config.yaml)")
    return parser.parse_intermixed_args(argv)  # options may come before or after the overrides


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.recipe.schema import load_recipe  # noqa: PLC0415
        from harness.workflows.cross_validation import cross_validate  # noqa: PLC0415

        cross_validate(load_recipe(args.recipe, args.overrides), args.folds, recipe_path=args.recipe,
                       resume=args.resume)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
