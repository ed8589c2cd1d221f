"""`harness.speed`: the structure and the arithmetic of what it reports (no assertion on a time)."""

from __future__ import annotations

import io

import pytest
import torch

from harness.core.speed import format_speed, measure_inference, model_size
from models import MLP, MnistCNN


def state_dict_tensor_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@pytest.mark.parametrize("make", [lambda: MLP(784, (64,), 10), lambda: MnistCNN(channels=(4, 8), hidden=16)])
def test_measure_inference_structure_and_sizes(make) -> None:
    model = make().train()
    images = torch.randn(5, 1, 28, 28)
    result = measure_inference(model, images, batch_sizes=(1, 8), warmup=2, repeats=20, max_seconds=None)

    assert model.training  # mode restored
    assert result["device"] == "cpu" and result["threads"] == torch.get_num_threads()
    assert [b["batch_size"] for b in result["batches"]] == [1, 8]  # 8 > 5 rows: rows are repeated
    for b in result["batches"]:
        lat = b["latency_ms"]
        assert b["runs"] == 20 and b["warmup"] == 2
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert lat["min"] <= lat["mean"] <= lat["max"]
        # throughput is samples over the total timed time, i.e. batch size / mean latency
        assert b["throughput_samples_per_s"] == pytest.approx(b["batch_size"] / (lat["mean"] / 1e3), rel=1e-9)

    assert result["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert result["num_trainable_parameters"] == result["num_parameters"]
    # Every parameter and buffer is float32 or (BatchNorm's batch counter) int64, all in the state_dict.
    assert result["param_bytes"] == 4 * result["num_parameters"]
    assert result["param_bytes"] + result["buffer_bytes"] == state_dict_tensor_bytes(model)
    assert result["size_mb"] == pytest.approx(state_dict_tensor_bytes(model) / 1e6, rel=1e-12)
    saved = io.BytesIO()
    torch.save(model.state_dict(), saved)
    assert result["state_dict_bytes"] == len(saved.getvalue())
    assert result["state_dict_mb"] == pytest.approx(result["state_dict_bytes"] / 1e6)
    assert state_dict_tensor_bytes(model) < result["state_dict_bytes"] < state_dict_tensor_bytes(model) + 64_000

    text = format_speed(result)
    assert f"{result['num_parameters']:,} parameters" in text
    assert len(text.splitlines()) == 3 + 2  # two header lines, the column names, one line per batch size


def test_buffers_and_frozen_parameters_are_counted() -> None:
    model = MnistCNN(channels=(4, 8), hidden=16)
    model.features[0][0].weight.requires_grad_(False)
    size = model_size(model)
    frozen = model.features[0][0].weight.numel()
    assert size["num_trainable_parameters"] == size["num_parameters"] - frozen
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # running_mean + running_var (float32, C each) and num_batches_tracked (one int64) per BatchNorm
    assert size["buffer_bytes"] == sum(2 * 4 * m.num_features + 8 for m in bn)


def test_time_budget_keeps_at_least_three_runs() -> None:
    result = measure_inference(MLP(784, (32,), 10), torch.randn(2, 1, 28, 28), batch_sizes=(4,), warmup=0,
                               repeats=50, max_seconds=0.0)
    assert result["batches"][0]["runs"] == 3


def test_runs_under_inference_mode_and_on_the_requested_device() -> None:
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.is_inference_mode_enabled(), self.training, x.shape[0], x.device.type))
            return self.linear(x)

    result = measure_inference(Probe(), torch.randn(4, 3), batch_sizes=(1, 3), warmup=1, repeats=2, device="cpu")
    assert seen == [(True, False, 1, "cpu")] * 3 + [(True, False, 3, "cpu")] * 3
    assert result["num_parameters"] == 3 * 2 + 2


@pytest.mark.parametrize(("precision", "channels_last", "dtype"),
                         [("32", False, torch.float32), ("bf16", True, torch.bfloat16),
                          ("bf16", False, torch.bfloat16)])
def test_timed_at_the_runs_precision_and_memory_format(precision: str, channels_last: bool, dtype: torch.dtype) -> None:
    """`evaluate --speed` times what the run computes: the recipe's autocast and NHWC inputs for channels_last."""
    seen = set()

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.conv(x)
            nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            seen.add((out.dtype, nhwc))
            return out

    result = measure_inference(Probe(), torch.randn(4, 3, 8, 8), batch_sizes=(1, 4), warmup=1, repeats=2,
                               precision=precision, channels_last=channels_last)
    assert seen == {(dtype, channels_last)}
    assert (result["precision"], result["channels_last"]) == (precision, channels_last)
    assert f"precision {precision}" in format_speed(result)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_sizes": ()}, "batch_sizes must be positive"),
    ({"batch_sizes": (1, 0)}, "batch_sizes must be positive"),
    ({"repeats": 0}, "repeats >= 1"),
])
def test_bad_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        measure_inference(MLP(784, (8,), 10), torch.randn(2, 1, 28, 28), **kwargs)


def test_example_input_must_be_a_batch() -> None:
    with pytest.raises(ValueError, match=r"example_input must be a batch"):
        measure_inference(MLP(784, (8,), 10), torch.randn(0, 1, 28, 28))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda() -> None:
    model = MLP(784, (64,), 10)
    result = measure_inference(model, torch.randn(4, 1, 28, 28), batch_sizes=(1, 64), warmup=2, repeats=5,
                               device="cuda")
    assert result["device"].startswith("cuda") and next(model.parameters()).is_cuda
    assert all(b["runs"] == 5 for b in result["batches"])
