"""Text from a trained language model: the work of `python -m harness.sample`, as a Python function.

The recipe builds the model (`model.name`, `model.args`), the checkpoint gives its weights and its
vocabulary (stored with every checkpoint of a `text_chars` run, so the ids mean the characters they
were trained on; the text file itself is not read). The prompt is encoded with that vocabulary, and
`generate` appends `tokens` characters drawn from the model's distribution, optionally sharpened
(`temperature` < 1) or cut to the `top_k` likeliest, from a generator seeded with `seed`: the same
command prints the same text.
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness.data.text_chars import decode, encode
from harness.errors import HarnessError
from harness.recipe.parts import setup
from harness.recipe.schema import Recipe
from harness.recipe.weights import load_checkpoint_model


def sample(recipe: Recipe, checkpoint: str | Path, prompt: str, tokens: int, *, temperature: float = 1.0,
           top_k: int | None = None, seed: int = 0) -> str:
    """The prompt followed by `tokens` generated characters. Bad input (a checkpoint that is not a text
    model's, a prompt character outside its vocabulary, a bad setting) raises HarnessError."""
    if tokens < 1 or temperature <= 0 or (top_k is not None and top_k < 1):
        raise HarnessError(f"--tokens {tokens}, --temperature {temperature}, --top-k {top_k}: need tokens >= 1, "
                           "temperature > 0 and top-k >= 1")
    env = setup(recipe)
    model, state, _ = load_checkpoint_model(recipe, checkpoint)
    vocabulary = state.get("extra", {}).get("vocabulary")
    if not isinstance(vocabulary, str):  # None: not text; a list: the words of a sentence classifier (text_lines)
        holds = "no vocabulary" if vocabulary is None else f"a vocabulary of {len(vocabulary)} words (a classifier's)"
        raise HarnessError(f"{checkpoint}: holds {holds}: sampling needs a checkpoint of a character-level "
                           "language model (a run with data.name=text_chars)")
    if not callable(getattr(model, "generate", None)):
        raise HarnessError(f"model.name={recipe.model.name} has no generate() method to sample with")
    try:
        ids = encode(prompt, vocabulary)
    except HarnessError as e:
        raise HarnessError(f"--prompt {prompt!r}: {e}") from None
    if len(ids) == 0:
        raise HarnessError("--prompt is empty: give the model at least one character to continue")
    model.to(env.device)
    generator = torch.Generator(device=env.device).manual_seed(seed)
    out = model.generate(ids[None].to(env.device), tokens, temperature=temperature, top_k=top_k, generator=generator)
    return decode(out[0].cpu(), vocabulary)
