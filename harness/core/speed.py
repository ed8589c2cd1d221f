"""Inference speed and size of a model: latency percentiles, throughput, parameters, bytes.

    from harness.core.speed import format_speed, measure_inference
    result = measure_inference(model, images[:256], batch_sizes=(1, 256))
    print(format_speed(result))

Timing: `warmup` untimed forward passes first (allocator, caches, lazy kernels), then timed passes
under `torch.inference_mode()` (and the autocast of `precision`, with inputs in the model's memory
format: what the run computes), each timed alone with `time.perf_counter`; on CUDA (and MPS) the
device is synchronised before starting and before stopping the clock, so a time covers the kernels,
not only their launch. Latencies are wall-clock per batch; throughput is samples / total timed time.
"""

from __future__ import annotations

import contextlib
import io
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.core.device import resolve_device


def model_size(model: nn.Module) -> dict[str, Any]:
    """Parameter count and bytes: parameters + buffers in memory, and the saved `state_dict` on disk.

    `size_mb` is the in-memory tensors (1 MB = 10^6 bytes); `state_dict_mb` is what `torch.save`
    writes (the same tensors plus a little pickle and zip overhead; buffers that are not
    persistent are not saved).
    """
    params = list(model.parameters())
    buffers = list(model.buffers())
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    buffer_bytes = sum(b.numel() * b.element_size() for b in buffers)
    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    return {
        "num_parameters": sum(p.numel() for p in params),
        "num_trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "param_bytes": param_bytes,
        "buffer_bytes": buffer_bytes,
        "size_mb": (param_bytes + buffer_bytes) / 1e6,
        "state_dict_bytes": saved.getbuffer().nbytes,
        "state_dict_mb": saved.getbuffer().nbytes / 1e6,
    }


def measure_inference(
    model: nn.Module,
    example_input: torch.Tensor,
    batch_sizes: Sequence[int] = (1, 256),
    *,
    warmup: int = 10,
    repeats: int = 100,
    max_seconds: float | None = 2.0,
    device: str | torch.device | None = None,
    precision: str = "32",
    channels_last: bool = False,
) -> dict[str, Any]:
    """Time forward passes of `model` at each batch size; also count its parameters and bytes.

    Args:
        model: any `nn.Module` taking one tensor. It is moved to `device` (in place) and run in
            eval mode; its train/eval mode is restored afterwards.
        example_input: a batch `(N, ...)` of inputs as the model takes them. A batch of size `b` is
            its first `b` rows, repeated when `N < b`.
        batch_sizes: e.g. `(1, 256)`: latency of a single sample and throughput of a large batch.
        warmup: untimed passes per batch size before timing.
        repeats: timed passes per batch size (the percentiles are over these).
        max_seconds: stop timing a batch size early once this much timed time is spent (at least 3
            passes still run); None always runs `repeats`. Keeps a slow model on a CPU to seconds.
        device: where to run; None: where the model's parameters are (CPU for a model without any).
        precision: "32", "bf16" or "16": the forward passes run under that autocast, as the Trainer's do.
        channels_last: give 4-D inputs in NHWC memory format (as a `trainer.channels_last` run feeds them).

    Returns plain data::

        {"device": "cpu", "device_name": ..., "threads": 2, "num_parameters": ..., "size_mb": ...,
         "state_dict_bytes": ..., ...,  # model_size(model)
         "batches": [{"batch_size": 1, "runs": 100, "warmup": 10,
                      "latency_ms": {"mean", "min", "p50", "p90", "p95", "p99", "max"},
                      "throughput_samples_per_s": ...}, ...]}
    """
    if not batch_sizes or any(b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive integers, got {tuple(batch_sizes)}")
    if example_input.ndim < 1 or example_input.shape[0] < 1:
        raise ValueError(f"example_input must be a batch (N, ...) with N >= 1, got shape {tuple(example_input.shape)}")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    if device is None:
        first = next(model.parameters(), None)
        target = first.device if first is not None else torch.device("cpu")
    else:
        target = resolve_device(device)
    was_training = model.training
    model.to(target).eval()
    try:
        with _autocast(precision, target):
            batches = [_time_batch_size(model, _batch(example_input, b, target, channels_last), warmup, repeats,
                                        max_seconds) for b in batch_sizes]
    finally:
        model.train(was_training)
    return {
        "device": str(target),
        "device_name": _device_name(target),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "channels_last": channels_last,
        **model_size(model),
        "batches": batches,
    }


def _batch(example: torch.Tensor, size: int, device: torch.device, channels_last: bool) -> torch.Tensor:
    index = torch.arange(size) % example.shape[0]
    fmt = torch.channels_last if channels_last and example.ndim == 4 else torch.contiguous_format
    return example[index].to(device).contiguous(memory_format=fmt)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if precision == "32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "16"):
        raise ValueError(f"precision {precision!r}: allowed are '32', 'bf16', '16'")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.inference_mode()
def _time_batch_size(model: nn.Module, batch: torch.Tensor, warmup: int, repeats: int,
                     max_seconds: float | None) -> dict[str, Any]:
    device = batch.device
    for _ in range(warmup):
        model(batch)
    _synchronize(device)
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (max_seconds is None or spent < max_seconds or len(times) < 3):
        _synchronize(device)  # note: start the clock with the device idle
        started = time.perf_counter()
        model(batch)
        _synchronize(device)  # ...and stop it when the kernels are done, not when they are queued
        times.append(time.perf_counter() - started)
        spent += times[-1]
    ms = np.asarray(times) * 1e3
    return {
        "batch_size": batch.shape[0],
        "runs": len(times),
        "warmup": warmup,
        "latency_ms": {
            "mean": float(ms.mean()),
            "min": float(ms.min()),
            "p50": float(np.percentile(ms, 50)),
            "p90": float(np.percentile(ms, 90)),
            "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)),
            "max": float(ms.max()),
        },
        "throughput_samples_per_s": batch.shape[0] * len(times) / spent,
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def format_speed(result: dict[str, Any]) -> str:
    """A few lines for a terminal: size, then one line per batch size."""
    lines = [
        f"model: {result['num_parameters']:,} parameters, {result['size_mb']:.3f} MB of parameters + buffers, "
        f"state_dict file {result['state_dict_mb']:.3f} MB",
        f"device: {result['device']} ({result['device_name']}, {result['threads']} threads), inference_mode, "
        f"precision {result.get('precision', '32')}{', channels_last' if result.get('channels_last') else ''}, "
        f"latency per batch over timed runs after warm-up",
        f"{'batch':>7} {'runs':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>11}",
    ]
    for b in result["batches"]:
        lat = b["latency_ms"]
        lines.append(f"{b['batch_size']:>7} {b['runs']:>5} {lat['p50']:>9.3f} {lat['p90']:>9.3f} {lat['p99']:>9.3f} "
                     f"{b['throughput_samples_per_s']:>11,.0f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- training throughput
# Dense peak FLOP/s of a GPU at each `trainer.precision`, the vendors' datasheet figures without sparsity.
# "32" is plain FP32 (PyTorch does not use TF32 for float32 matmuls unless asked). MFU is reported for
# these GPUs only; the first name that is part of the device's name wins.
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756e12, "16": 756e12, "32": 51e12},
    "H100": {"bf16": 989e12, "16": 989e12, "32": 67e12},  # SXM
    "H200": {"bf16": 989e12, "16": 989e12, "32": 67e12},
    "A100": {"bf16": 312e12, "16": 312e12, "32": 19.5e12},
}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The datasheet peak FLOP/s of a CUDA device at `precision`, when `PEAK_FLOPS` knows it; else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks.get(precision) for gpu, peaks in PEAK_FLOPS.items() if gpu in name), None)


def peak_memory_mb(device: torch.device) -> float:
    """The high-water mark of memory, in MB (10^6 bytes): on CUDA the tensors allocated on `device`
    (`torch.cuda.max_memory_allocated`), elsewhere the process's maximum resident set (everything the
    process ever held in RAM, interpreter and libraries included: `resource.getrusage`)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e6
    import resource  # noqa: PLC0415  (POSIX only: imported where it is used)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e6 if sys.platform == "darwin" else rss * 1024 / 1e6  # bytes on macOS, KiB on Linux


def flop_counter() -> Any:
    """A `torch.utils.flop_counter.FlopCounterMode` that also counts the CPU's fused attention.

    torch's counter knows the CUDA attention kernels but not `_scaled_dot_product_flash_attention_for_cpu`
    (and its backward), which `F.scaled_dot_product_attention` runs on a CPU: without these the attention
    matmuls of a transformer would count zero. Counted with torch's own formulas for the CUDA kernels."""
    from torch.utils import flop_counter as fc  # noqa: PLC0415  (imported once per run, when FLOPs are counted)

    aten = torch.ops.aten

    def forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return fc.sdpa_flop_count(query, key, value)

    def backward(grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return fc.sdpa_backward_flop_count(grad, query, key, value)

    return fc.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward})
