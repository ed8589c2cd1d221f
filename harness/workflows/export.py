"""The model, portable: the work of `python -m harness.export`, as a Python function.

Writes the checkpoint's model in a format that runs without the harness, then checks it: the
exported file is loaded back and run on a batch of the recipe's test split with a batch size other
than the one it was exported with (the batch dimension is dynamic), and the largest absolute
difference from the PyTorch model's outputs must be at most `atol` (default 1e-4, `--atol`); above
it the command fails (`CheckFailed`, exit code 1) and nothing is left at the output path.

    onnx         ONNX (opset 17) through torch's TorchScript-based exporter (`dynamo=False`), checked
                 with onnx.checker and run with onnxruntime: `pip install -e '.[export]'`. The dynamo
                 exporter needs onnxscript as well and took ~40 s against ~1 s for the MNIST MLP here.
    torchscript  `torch.jit.trace` in eval mode, saved with `torch.jit.save`; load with `torch.jit.load`
                 (also from C++ libtorch). torch 2.14 marks torch.jit deprecated in favour of torch.export.
    state_dict   the bare weights, `torch.save(model.state_dict())`; load into the model class with
                 `model.load_state_dict(torch.load(path))`.

Every export carries what a user needs to feed it (`export_metadata`): the input shape, the
normalisation the model was trained with (`x = (pixel / 255 - mean) / std` per channel) or, for
sentences, the vocabulary that turns words into token ids, and the class names in output order:
ONNX `metadata_props`, TorchScript `_extra_files["harness_export.json"]`, and for
state_dict a sidecar `<output>.json`.

A character-level language model (`data.name: text_chars`) takes int64 character ids of shape
(batch, sequence), both dimensions dynamic, the sequence at most `data.block_size` long, and gives
(batch, sequence, vocabulary) logits of the next character; its metadata holds the vocabulary (id i is
its i-th character) and the block size instead of class names and mean / std. It is checked on real
windows of the validation text, whole and cut to half their length (the sequence dimension is dynamic).

The weights are those `harness.evaluate` scores (`load_checkpoint_model`): the raw weights, or the EMA average when the
recipe has `trainer.ema`. Default output: beside the run, `<run>/export/<checkpoint stem>.<ext>`. The output is
written to a temporary file and renamed into place once it passed the check; it never replaces a directory,
the checkpoint it comes from, or any other harness checkpoint.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.checkpoint import FORMAT, load_file, publish, temporary_beside
from harness.data.map_style import NormalizeCollate
from harness.data.tensor_loader import FeatureStandardize, TensorLoader
from harness.data.text_chars import TEXT_CHARS
from harness.data.text_lines import PAD_INDEX, TextLoader
from harness.errors import CheckFailed, HarnessError
from harness.recipe.build import build_model
from harness.recipe.choices import DEFAULT_EXPORT_ATOL, EXPORT_FORMATS
from harness.recipe.data import Data, build_data
from harness.recipe.run_folder import results_folder, write_json
from harness.recipe.schema import Recipe
from harness.recipe.weights import check_same_data, check_vocabulary, load_checkpoint_model

FORMATS = EXPORT_FORMATS
ONNX_OPSET = 17
INSTALL_HINT = "pip install -e '.[export]'"
CHECK_BATCH = 37  # rows of the check batch: not the export batch size, so a fixed batch dim would fail
ATOL = DEFAULT_EXPORT_ATOL  # largest absolute difference allowed between the file's outputs and the model's
METADATA_FILE = "harness_export.json"  # TorchScript: the name of the metadata in `_extra_files`


def example_batch(recipe: Recipe, size: int = CHECK_BATCH) -> torch.Tensor:
    """The first `size` inputs of the recipe's test split, normalised (or encoded) as in training (CPU)."""
    return _example(recipe, size)[0]


def _example(recipe: Recipe, size: int) -> tuple[torch.Tensor, Any, Data]:
    """The first `size` test inputs, the loader that made them (its normalisation), the data (class names,
    vocabulary); text_chars: `size` windows of the validation text."""
    data = build_data(recipe.data.model_copy(update={"eval_batch_size": size}), torch.device("cpu"),
                      recipe.trainer.seed)
    inputs, _ = next(iter(data.test))
    return inputs, data.test, data


def check_inputs(recipe: Recipe, batch: torch.Tensor) -> list[torch.Tensor]:
    """What the exported file is checked on: the check batch, and for text the same windows cut to half
    their length too (the sequence dimension is dynamic: a file fixed to block_size would fail it)."""
    return [batch, batch[:, : max(1, batch.shape[1] // 2)]] if recipe.data.name == TEXT_CHARS else [batch]


def export_metadata(recipe: Recipe, checkpoint: str | Path, epoch: int, weights: str, batch: torch.Tensor,
                    loader: Any, classes: list[str], vocabulary: str | list[str] | None = None) -> dict[str, Any]:
    """What a user of the exported file needs to feed it and read its output.

    `mean` / `std` are those of the loader that made the check batch: what the model was trained on.
    A data source whose loaders the harness does not build (an import function's own loader or
    dataset transforms) leaves them None and says so. Sentences carry their `vocabulary` (token id i is
    word i) instead: the one thing that turns text into the model's input. A character-level language
    model (`text_chars`): `text_metadata`."""
    if recipe.data.name == TEXT_CHARS:
        return text_metadata(recipe, checkpoint, epoch, weights, "".join(classes))
    if isinstance(loader, TextLoader):
        return {
            "input_name": "input",
            "input_shape": ["batch", "tokens"],
            "input_dtype": str(batch.dtype).removeprefix("torch."),
            "preprocessing": (f"text decoded as {recipe.data.encoding}; each sentence split into words on blanks "
                              "(spaces, tabs); each word's index in vocabulary (1, <unk>, for a word not in it); "
                              f"sentences right-padded with {PAD_INDEX} (<pad>) to the longest of the batch, "
                              "int64 (batch, tokens)"),
            "mean": None,
            "std": None,
            "vocabulary": list(vocabulary or []),
            "classes": list(classes),
            "output": "one score (logit) per class, in the order of classes",
            "checkpoint": str(checkpoint),
            "epoch": epoch,
            "weights": weights,
        }
    normalize = None
    if isinstance(loader, TensorLoader):
        normalize = loader.normalize
    elif isinstance(getattr(loader, "collate_fn", None), NormalizeCollate):
        normalize = loader.collate_fn.normalize
    if isinstance(normalize, FeatureStandardize):
        preprocessing = "x = (feature - mean) / std per feature, float32 (batch, features)"
    elif normalize is not None:
        preprocessing = ("x = (pixel / 255 - mean) / std per channel, pixels uint8 in [0, 255], "
                         "float32 (batch, channels, height, width)")
        if recipe.data.name == "sklearn:digits":
            preprocessing = "pixels 0-16 as scikit-learn's load_digits gives them; " + preprocessing
        if recipe.data.name == "image_folder":
            preprocessing = f"RGB, resized to {recipe.data.image_size}x{recipe.data.image_size}; " + preprocessing
    else:
        preprocessing = f"as data.name={recipe.data.name} prepares its inputs (not known to the harness)"
    return {
        "input_name": "input",
        "input_shape": ["batch", *batch.shape[1:]],
        "input_dtype": str(batch.dtype).removeprefix("torch."),
        "preprocessing": preprocessing,
        "mean": list(normalize.mean) if normalize is not None else None,
        "std": list(normalize.std) if normalize is not None else None,
        "classes": list(classes),
        "output": "one score (logit) per class, in the order of classes",
        "checkpoint": str(checkpoint),
        "epoch": epoch,
        "weights": weights,
    }


def text_metadata(recipe: Recipe, checkpoint: str | Path, step: int, weights: str, vocabulary: str) -> dict[str, Any]:
    """A character-level language model's: the vocabulary (id i is `vocabulary[i]`) and the longest sequence."""
    block_size = recipe.data.block_size
    return {
        "input_name": "input",
        "input_shape": ["batch", "sequence"],
        "input_dtype": "int64",
        "preprocessing": f"character ids: id i is the i-th character of vocabulary; sequence <= {block_size}",
        "vocabulary": vocabulary,
        "block_size": block_size,
        "output": "logits of the next character at each position: (batch, sequence, vocabulary size), "
                  "in the order of vocabulary",
        "checkpoint": str(checkpoint),
        "step": step,
        "weights": weights,
    }


def sidecar_path(output: str | Path) -> Path:
    """The state_dict format's metadata file: `<output>.json`."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def check_output(output: Path, checkpoint: str | Path, fmt: str) -> None:
    """Refuse, before any work, an output that is a folder, the source checkpoint or any harness
    checkpoint: an export must never replace a checkpoint (optimizer, history, RNG and recipe would be lost)."""
    targets = [output, sidecar_path(output)] if fmt == "state_dict" else [output]
    for path in targets:
        if path.is_dir():
            raise HarnessError(f"--output {path}: is a folder; give a file path, e.g. {path / Path(checkpoint).stem}"
                               f"{FORMATS[fmt]}")
        if not path.exists():
            continue
        if Path(checkpoint).exists() and path.resolve() == Path(checkpoint).resolve():
            raise HarnessError(f"--output {path}: is the checkpoint being exported; an export never replaces "
                               "a checkpoint, give another path")
        if _is_harness_checkpoint(path):
            raise HarnessError(f"--output {path}: is a harness checkpoint; an export never replaces a checkpoint, "
                               "give another path")


def _is_harness_checkpoint(path: Path) -> bool:
    try:
        state = load_file(path, str(path))
    except HarnessError:  # not something torch.save wrote: an earlier export, any other file
        return False
    return isinstance(state, dict) and state.get("format") == FORMAT


def export(recipe: Recipe, checkpoint: str | Path, fmt: str, output: str | Path | None = None, *,
           atol: float = ATOL, verbose: bool = True) -> dict[str, Any]:
    """Export `checkpoint`'s model as `fmt` with its metadata, load the file back and compare outputs
    on a test batch; raise `CheckFailed` (nothing written) when they differ by more than `atol`.

    Returns {"format", "output", "bytes", "check_batch_size", "max_abs_diff", "atol", "metadata"}
    (plus "metadata_file" for state_dict).
    """
    if fmt not in FORMATS:
        raise HarnessError(f"--format {fmt!r}: allowed are {', '.join(FORMATS)}")
    if not (math.isfinite(atol) and atol >= 0):
        raise HarnessError(f"--atol {atol}: must be a finite number >= 0")
    output = Path(output) if output is not None else default_output(checkpoint, fmt)
    check_output(output, checkpoint, fmt)
    if fmt == "onnx":
        _require_onnx()
    model, state, weights = load_checkpoint_model(recipe, checkpoint)
    # The class names and normalisation written into the file are the recipe's: they must be the checkpoint's.
    check_same_data(state, recipe, "test", Path(checkpoint))
    batch, loader, data = _example(recipe, CHECK_BATCH)
    check_vocabulary(state, data.vocabulary, checkpoint)  # the vocabulary written is the one the model was trained with
    text = recipe.data.name == TEXT_CHARS  # a language model: (batch, sequence) in, (batch, sequence, vocab) out
    tokens = isinstance(loader, TextLoader)  # sentences: the length dimension is dynamic too
    metadata = export_metadata(recipe, checkpoint, state["global_step" if text else "epoch"], weights, batch, loader,
                               data.classes, data.vocabulary)
    # Exported with a batch of 2 (sentences: the two shortest, padded to the longer of them), checked with
    # CHECK_BATCH rows (text: also cut to half their length): the batch and length dimensions must be dynamic.
    exported_with = _shortest_two(batch) if tokens else batch[:2]
    inputs = check_inputs(recipe, batch)
    tmp = temporary_beside(output)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.14 marks torch.jit deprecated (for torch.export); it works. The GPT's length check and
            # positions are Python values to the tracer, which warns; the check on two lengths shows the trace right.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            expected = [model(x) for x in inputs]
            if fmt == "onnx":
                _export_onnx(model, exported_with, tmp, metadata, text, tokens)
                got = [_run_onnx(tmp, x) for x in inputs]
            elif fmt == "torchscript":
                torch.jit.save(torch.jit.trace(model, exported_with), str(tmp),
                               _extra_files={METADATA_FILE: json.dumps(metadata)})
                loaded = torch.jit.load(str(tmp), map_location="cpu")
                got = [loaded(x) for x in inputs]
            else:
                torch.save(model.state_dict(), tmp)
                vocab_size = None if data.vocabulary is None else len(data.vocabulary)
                fresh = build_model(recipe.model, vocab_size=vocab_size)  # a new instance of the recipe's class
                fresh.load_state_dict(torch.load(tmp, map_location="cpu", weights_only=True))
                got = [fresh.eval()(x) for x in inputs]
        diff = max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True))
        if not diff <= atol:  # NaN fails too
            what = f"{batch.shape[0]} validation windows of {batch.shape[1]} and {inputs[-1].shape[1]} characters" \
                if text else f"{batch.shape[0]} test inputs"
            raise CheckFailed(
                f"export check failed: the {fmt} file's outputs differ from the PyTorch model's by up to {diff:.3g} "
                f"on {what} (exported with a batch of 2{' shorter sentences' * tokens}), more than --atol {atol:g}; "
                f"nothing written to {output}")
        publish(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    result = {"format": fmt, "output": str(output), "bytes": output.stat().st_size,
              "check_batch_size": batch.shape[0], "check_lengths": [x.shape[1] for x in inputs] if text else None,
              "max_abs_diff": diff, "atol": atol, "metadata": metadata}
    if fmt == "state_dict":
        result["metadata_file"] = str(write_json(sidecar_path(output), metadata))
    if verbose:
        print(format_export(result), flush=True)
    return result


def format_export(result: dict[str, Any]) -> str:
    """What was written, how it was checked, and how to feed it."""
    meta = result["metadata"]
    shape = "(" + ", ".join(map(str, meta["input_shape"])) + ")"
    where = {"onnx": "ONNX metadata_props", "torchscript": f"TorchScript extra file {METADATA_FILE}",
             "state_dict": result.get("metadata_file")}[result["format"]]
    lengths = result.get("check_lengths")
    checked = f"{result['check_batch_size']} validation windows of {' and '.join(map(str, lengths))} characters" \
        if lengths else f"{result['check_batch_size']} test inputs"
    lines = [
        f"wrote {result['output']} ({result['format']}, {result['bytes'] / 1e6:.3f} MB)",
        f"checked on {checked}: max abs difference from the PyTorch model "
        f"{result['max_abs_diff']:.3g} (allowed: --atol {result['atol']:g})",
        f"input '{meta['input_name']}' {shape} {meta['input_dtype']}: {meta['preprocessing']}",
    ]
    if "vocabulary" in meta and isinstance(meta["vocabulary"], str):  # a language model's characters
        shown = meta["vocabulary"][:40] + ("..." if len(meta["vocabulary"]) > 40 else "")
        lines.append(f"output: {meta['output']}; vocabulary of {len(meta['vocabulary'])} characters {shown!r}")
    else:
        if meta["mean"] is not None:
            lines.append(f"mean {meta['mean']}, std {meta['std']}")
        if meta.get("vocabulary") is not None:
            lines.append(f"vocabulary: {len(meta['vocabulary'])} words, in the metadata under 'vocabulary'")
        names = meta["classes"]
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
        lines.append(f"output: one logit per class, classes {shown}")
    lines.append(f"metadata: {where}")
    return "\n".join(lines)


def default_output(checkpoint: str | Path, fmt: str) -> Path:
    """`<run>/export/<checkpoint stem><ext>` for `<run>/checkpoints/<stem>.pt`."""
    return results_folder(checkpoint) / "export" / f"{Path(checkpoint).stem}{FORMATS[fmt]}"


def _require_onnx() -> None:
    try:
        # optional: the `export` extra; only --format onnx needs them
        import onnx  # noqa: F401, PLC0415
        import onnxruntime  # noqa: F401, PLC0415
    except ImportError as e:
        raise HarnessError(f"--format onnx needs the onnx and onnxruntime packages ({e}): {INSTALL_HINT}") from None


def _shortest_two(batch: torch.Tensor) -> torch.Tensor:
    """The two shortest sentences of a padded token batch, padded to the longer of them: exported with
    these, a file that fixed the length dimension fails the check on the whole batch."""
    lengths = (batch != PAD_INDEX).sum(dim=1)
    rows = lengths.argsort(stable=True)[:2]
    return batch[rows, : int(lengths[rows].max())]


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, Any], text: bool = False,
                 tokens: bool = False) -> None:
    import onnx  # noqa: PLC0415  (optional, as above)

    # The TorchScript-based exporter: fast and enough for these models (the GPT's causal attention becomes
    # a mask built from the input's length, so the sequence dimension stays dynamic too). torch >= 2.9
    # defaults to the dynamo exporter (needs onnxscript; ~40 x slower here) and marks this one deprecated:
    # we chose it knowingly, so its deprecation warnings are silenced here and only here.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    # text: (batch, sequence) in and out; sentences: (batch, tokens) in, (batch, classes) out
    axes = {0: "batch", 1: "sequence"} if text else {0: "batch", 1: "tokens"} if tokens else {0: "batch"}
    output_axes = axes if text else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": axes, "output": output_axes}, opset_version=ONNX_OPSET, **legacy)
    proto = onnx.load(str(path))
    for key, value in metadata.items():  # one entry per key, its value as JSON text ("[0.1307]", "null")
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))


def _run_onnx(path: Path, batch: torch.Tensor) -> torch.Tensor:
    import onnxruntime  # noqa: PLC0415  (optional, as above)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": batch.numpy()})
    return torch.from_numpy(out)
