"""`python -m harness.export RECIPE --checkpoint PATH --format onnx|torchscript|state_dict`: the model, portable.

The command line of `harness.workflows.export`: that module says what is done, how it is measured and
which files are written.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import command_parser, run_command
from harness.recipe.choices import DEFAULT_EXPORT_ATOL, EXPORT_FORMATS

EXAMPLES = """examples:
  python -m harness.export recipes/mnist.yaml --checkpoint runs/mnist/<time>/checkpoints/best.pt --format onnx
  python -m harness.export recipes/mnist.yaml --checkpoint CKPT --format torchscript --output mnist.pt
  python -m harness.export recipes/mnist.yaml --checkpoint CKPT --format state_dict
  python -m harness.export recipes/mnist.yaml --checkpoint CKPT --format onnx --atol 1e-3"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("export", __doc__.splitlines()[0], EXAMPLES)
    parser.add_argument("recipe", help="the YAML recipe the checkpoint was trained with")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="e.g. runs/mnist/<time>/checkpoints/best.pt")
    parser.add_argument("--format", required=True, choices=list(EXPORT_FORMATS), dest="fmt")
    parser.add_argument("--output", metavar="PATH", help="default: <run>/export/<checkpoint stem>.<ext>; "
                        "never a checkpoint")
    parser.add_argument("--atol", type=float, default=DEFAULT_EXPORT_ATOL,
                        help="largest absolute difference allowed between the exported file's outputs and the "
                             "PyTorch model's; above it nothing is written and the exit code is 1 "
                             f"(default {DEFAULT_EXPORT_ATOL:g})")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.recipe.schema import load_recipe  # noqa: PLC0415
        from harness.workflows.export import export  # noqa: PLC0415

        export(load_recipe(args.recipe, args.overrides), args.checkpoint, args.fmt, args.output, atol=args.atol)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
