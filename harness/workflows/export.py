"""The model, portable: the work of `python -m harness.export`, as a Python function.

Writes the checkpoint's model in a format that runs without the harness, then checks it: the
exported file is loaded back and run on a batch of the recipe's test split with a batch size other
than the one it was exported with (the batch dimension is dynamic), and the largest absolute
difference from the PyTorch model's outputs is printed.

    onnx         ONNX (opset 17) through torch's TorchScript-based exporter (`dynamo=False`), checked
                 with onnx.checker and run with onnxruntime: `pip install -e '.[export]'`. The dynamo
                 exporter needs onnxscript as well and took ~40 s against ~1 s for the MNIST MLP here.
    torchscript  `torch.jit.trace` in eval mode, saved with `torch.jit.save`; load with `torch.jit.load`
                 (also from C++ libtorch). torch 2.14 marks torch.jit deprecated in favour of torch.export.
    state_dict   the bare weights, `torch.save(model.state_dict())`; load into the model class with
                 `model.load_state_dict(torch.load(path))`.

The weights are those `harness.evaluate` scores (`load_checkpoint_model`): the raw weights, or the EMA average when the
recipe has `trainer.ema`. Default output: beside the run, `<run>/export/<checkpoint stem>.<ext>`.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.core.checkpoint import atomic_save
from harness.errors import HarnessError
from harness.recipe.build import build_model
from harness.recipe.choices import EXPORT_FORMATS
from harness.recipe.data import build_data
from harness.recipe.run_folder import results_folder
from harness.recipe.schema import Recipe
from harness.recipe.weights import load_checkpoint_model

FORMATS = EXPORT_FORMATS
ONNX_OPSET = 17
INSTALL_HINT = "pip install -e '.[export]'"
CHECK_BATCH = 37  # rows of the check batch: not the export batch size, so a fixed batch dim would fail



def example_batch(recipe: Recipe, size: int = CHECK_BATCH) -> torch.Tensor:
    """The first `size` inputs of the recipe's test split, normalised as in training (CPU)."""
    data = build_data(recipe.data.model_copy(update={"eval_batch_size": size}), torch.device("cpu"),
                      recipe.trainer.seed)
    inputs, _ = next(iter(data.test))
    return inputs


def export(recipe: Recipe, checkpoint: str | Path, fmt: str, output: str | Path | None = None, *,
           verbose: bool = True) -> dict[str, Any]:
    """Export `checkpoint`'s model as `fmt`, load the file back and compare outputs on a test batch.

    Returns {"format", "output", "bytes", "check_batch_size", "max_abs_diff"}.
    """
    if fmt not in FORMATS:
        raise HarnessError(f"--format {fmt!r}: allowed are {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    model, _, _ = load_checkpoint_model(recipe, checkpoint)
    batch = example_batch(recipe)
    output = Path(output) if output is not None else default_output(checkpoint, fmt)
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = model(batch)
        # Exported with a batch of 2, checked with CHECK_BATCH rows: the batch dimension must be dynamic.
        if fmt == "onnx":
            _export_onnx(model, batch[:2], output)
            got = _run_onnx(output, batch)
        elif fmt == "torchscript":
            with warnings.catch_warnings():  # torch 2.14 marks torch.jit deprecated (for torch.export); it works
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
                torch.jit.save(torch.jit.trace(model, batch[:2]), str(output))
                got = torch.jit.load(str(output), map_location="cpu")(batch)
        else:
            atomic_save(model.state_dict(), output)
            fresh = build_model(recipe.model)  # a new instance of the recipe's class
            fresh.load_state_dict(torch.load(output, map_location="cpu", weights_only=True))
            got = fresh.eval()(batch)
    result = {"format": fmt, "output": str(output), "bytes": output.stat().st_size,
              "check_batch_size": batch.shape[0], "max_abs_diff": (got - expected).abs().max().item()}
    if verbose:
        print(f"wrote {output} ({fmt}, {result['bytes'] / 1e6:.3f} MB)\n"
              f"checked on {batch.shape[0]} test inputs: max abs difference from the PyTorch model "
              f"{result['max_abs_diff']:.3g}", flush=True)
    return result


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


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    import onnx  # noqa: PLC0415  (optional, as above)

    # The TorchScript-based exporter: fast and enough for these models. torch >= 2.9 defaults to the
    # dynamo exporter (needs onnxscript; ~40 x slower here) and marks this one deprecated: we chose it
    # knowingly, so its deprecation warnings are silenced here and only here.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=ONNX_OPSET,
                          **legacy)
    onnx.checker.check_model(str(path))


def _run_onnx(path: Path, batch: torch.Tensor) -> torch.Tensor:
    import onnxruntime  # noqa: PLC0415  (optional, as above)

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": batch.numpy()})
    return torch.from_numpy(out)
