"""`python -m harness.compress RECIPE --checkpoint PATH [--sparsities 0.3,0.5,0.7,0.9]`: smaller models, scored.

The command line of `harness.workflows.compression`: that module says what is done, how it is measured and
which files are written.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import command_parser, run_command
from harness.recipe.choices import DEFAULT_SPARSITIES

EXAMPLES = """examples:
  python -m harness.compress recipes/mnist_mlp.yaml --checkpoint runs/mnist_mlp/<time>/checkpoints/best.pt
  python -m harness.compress recipes/mnist.yaml --checkpoint CKPT --sparsities 0.5,0.8,0.95
  python -m harness.compress recipes/shakespeare_char.yaml --checkpoint CKPT trainer.threads=1   # per character"""


def parse_sparsities(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 0.3,0.5,0.9, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("compress", __doc__.splitlines()[0], EXAMPLES)
    parser.add_argument("recipe", help="the YAML recipe the checkpoint was trained with")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.eval_batch_size=500")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="e.g. runs/mnist/<time>/checkpoints/best.pt")
    parser.add_argument("--sparsities", type=parse_sparsities, default=list(DEFAULT_SPARSITIES),
                        help="fractions of Linear/Conv weights to prune, comma-separated (default 0.3,0.5,0.7,0.9)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.recipe.schema import load_recipe  # noqa: PLC0415
        from harness.workflows.compression import compress  # noqa: PLC0415

        compress(load_recipe(args.recipe, args.overrides), args.checkpoint, args.sparsities, args.recipe)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
