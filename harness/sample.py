"""`python -m harness.sample RECIPE --checkpoint PATH --prompt TEXT [--tokens N] [--temperature T] [--top-k K]`: text.

The command line of `harness.workflows.sampling`: the model the recipe builds, with the checkpoint's
weights and vocabulary, continues the prompt; the text is printed.
"""

from __future__ import annotations

import argparse
import sys

from harness.cli import command_parser, run_command

EXAMPLES = """examples:
  python -m harness.sample recipes/shakespeare_char.yaml \\
      --checkpoint runs/shakespeare_char/<time>/checkpoints/best.pt --prompt "ROMEO:" --tokens 300
  python -m harness.sample recipes/shakespeare_char.yaml --checkpoint CKPT --prompt "KING" --temperature 0.8 \\
      --top-k 20"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("sample", __doc__.splitlines()[0], EXAMPLES)
    parser.add_argument("recipe", help="the YAML recipe the checkpoint was trained with")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.device=cpu")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="e.g. runs/shakespeare_char/<time>/checkpoints/best.pt")
    parser.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    parser.add_argument("--tokens", type=int, default=300, help="characters to generate (default 300)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="divides the logits: < 1 more likely text, > 1 more varied (default 1.0)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest characters only")
    parser.add_argument("--seed", type=int, default=0, help="of the sampler: the same seed prints the same text")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def command() -> None:
        # Imported here, not at the top: the workflow imports torch, and `--help` should not wait for it.
        from harness.recipe.schema import load_recipe  # noqa: PLC0415
        from harness.workflows.sampling import sample  # noqa: PLC0415

        text = sample(load_recipe(args.recipe, args.overrides), args.checkpoint, args.prompt, args.tokens,
                      temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        print(text, flush=True)

    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
