"""A finished training run, opened in the real TensorBoard server and read back through its HTTP API, the
way the browser reads it: the scalars (no `epoch` diagonal), the custom-scalars layout with train and
validation loss on one chart, the resolved recipe as text, and the HParams row, with every value equal to
history.jsonl. The server runs as a subprocess on 127.0.0.1; it picks a free port itself (`--port 0`) and
prints the URL it bound, so no port is guessed and none can be taken in between."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import write_fake_mnist
from hang_guard import HANG_GUARD_S

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed: no server to start")

STARTUP_S = 120.0  # a deadline, not an expectation: on an idle machine the server is up in ~3 s
LOAD_S = 60.0  # the same for the server's first read of the event files
SERVING = re.compile(r"TensorBoard \S+ at (http://127\.0\.0\.1:\d+/)")


@contextmanager
def tensorboard_server(logdir: Path, scratch: Path) -> Iterator[str]:
    """Start `tensorboard --logdir logdir` on 127.0.0.1, yield its base URL, and always stop it."""
    log = scratch / "tensorboard.stderr"
    # TMPDIR: TensorBoard records each server in <tmp>/.tensorboard-info/; keep that file in the test's folder.
    env = {**os.environ, "TMPDIR": str(scratch)}
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        deadline = time.monotonic() + STARTUP_S
        while (found := SERVING.search(log.read_text())) is None:
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited with {server.returncode} before serving:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard printed no URL within {STARTUP_S:.0f} s:\n{log.read_text()}")
            time.sleep(0.1)
        yield found.group(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def get(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(url + path + query, timeout=HANG_GUARD_S) as response:
        return json.load(response)


def post(url: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:
        return json.load(response)


def poll(fetch: Callable[[], Any], ready: Callable[[Any], bool]) -> Any:
    """fetch() until ready(answer) or the deadline; the last answer either way, for the asserts to judge.
    The server reads the event files in the background after it starts serving: early answers may be empty."""
    deadline = time.monotonic() + LOAD_S
    while True:
        try:
            answer = fetch()
        except urllib.error.HTTPError as e:  # e.g. 400 from a plugin that has not read its data yet
            answer = e
        if (not isinstance(answer, Exception) and ready(answer)) or time.monotonic() > deadline:
            if isinstance(answer, Exception):
                raise answer
            return answer
        time.sleep(0.2)


def finished_run(tmp_path: Path) -> Path:
    """Two epochs of the MLP recipe on a small fake MNIST: a finished run folder, tested, summary written."""
    from harness.train import main

    write_fake_mnist(tmp_path / "data", n_train=300, n_test=100)
    assert main(["recipes/mnist_mlp.yaml", "trainer.epochs=2", "data.val_size=100", "data.batch_size=50",
                 f"data.root={tmp_path / 'data'}", "trainer.progress=false", "trainer.device=cpu",
                 f"logging.root={tmp_path / 'runs'}"]) == 0
    [run_dir] = (tmp_path / "runs").glob("*/*")
    return run_dir


def test_the_tensorboard_server_shows_a_finished_run_as_a_dashboard(tmp_path: Path, one_thread) -> None:
    run_dir = finished_run(tmp_path)
    logs = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    epochs, tested = [line for line in logs if "epoch" in line], logs[-1]
    assert [line["epoch"] for line in epochs] == [1, 2] and "test/acc" in tested
    run = run_dir.relative_to(tmp_path / "runs").as_posix()  # TensorBoard names a run by its folder under logdir

    with tensorboard_server(tmp_path / "runs", tmp_path) as url:
        plugins = get(url, "data/plugins_listing")
        for plugin in ("scalars", "custom_scalars", "text", "hparams"):
            assert plugins[plugin]["enabled"], plugin

        wanted = {"train/loss", "val/loss", "val/acc", "val/f1", "lr", "lr_end", "samples_per_s", "test/acc"}
        tags = poll(lambda: get(url, "data/plugin/scalars/tags"), lambda t: wanted <= set(t.get(run, {})))
        assert wanted <= set(tags[run]), sorted(tags)
        assert "epoch" not in tags[run]  # the step axis already: a scalar of it would be a diagonal line

        # Every curve, step by step, equal to history.jsonl (TensorBoard stores float32).
        for tag in ("train/loss", "val/loss", "val/acc", "val/f1", "lr", "lr_end"):
            points = get(url, "data/plugin/scalars/scalars", run=run, tag=tag)
            assert [step for _, step, _ in points] == [line["step"] for line in epochs], tag
            assert [value for _, _, value in points] == pytest.approx([line[tag] for line in epochs], rel=1e-6), tag
        [(_, step, value)] = get(url, "data/plugin/scalars/scalars", run=run, tag="test/acc")
        assert step == tested["step"] and value == pytest.approx(tested["test/acc"], rel=1e-6)

        # CUSTOM SCALARS: one chart draws train and validation loss, and the server resolves both to their data.
        layout = poll(lambda: get(url, "data/plugin/custom_scalars/layout"), lambda answer: answer)
        charts = {chart["title"]: chart["multiline"]["tag"] for category in layout["category"]
                  for chart in category["chart"]}
        def draws(regexes: list[str]) -> dict[str, list[list[float]]]:
            payload: dict[str, list[list[float]]] = {}
            for regex in regexes:
                payload.update(get(url, "data/plugin/custom_scalars/scalars", run=run, tag=regex)["tag_to_events"])
            return payload

        [drawn] = [d for d in map(draws, charts.values()) if {"train/loss", "val/loss"} <= set(d)]
        assert set(drawn) == {"train/loss", "val/loss"}
        for tag, points in drawn.items():
            assert [value for _, _, value in points] == pytest.approx([line[tag] for line in epochs], rel=1e-6)
        assert {"^val/acc$", "^val/f1$", "^lr$", "^samples_per_s$"} <= {t for tags in charts.values() for t in tags}

        # TEXT: the resolved recipe as saved in config.yaml, shown verbatim (a code block in the HTML served).
        texts = poll(lambda: get(url, "data/plugin/text/tags"), lambda t: t.get(run))
        [tag] = [tag for tag in texts[run] if tag.startswith("recipe")]
        [entry] = get(url, "data/plugin/text/text", run=run, tag=tag)
        [code] = re.findall(r"<pre><code>(.*?)</code></pre>", entry["text"], flags=re.S)
        assert html.unescape(code).strip() == (run_dir / "config.yaml").read_text().strip()

        # HPARAMS: the run's row, its final validation and test figures as the metrics (under whatever tag
        # names the hparams use: each must be a scalar of the run, its value that scalar's last one).
        experiment = poll(lambda: post(url, "data/plugin/hparams/experiment", {"experimentName": ""}),
                          lambda answer: answer.get("metricInfos"))
        metric_tags = [info["name"]["tag"] for info in experiment["metricInfos"]]
        assert set(metric_tags) <= set(tags[run]), metric_tags
        groups = post(url, "data/plugin/hparams/session_groups",
                      {"experimentName": "", "startIndex": 0, "sliceSize": 100,
                       "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})
        [group] = groups["sessionGroups"]
        assert group["name"] == run
        assert any("epochs" in key and value == 2 for key, value in group["hparams"].items()), group["hparams"]
        values = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert set(values) == set(metric_tags)
        for tag, value in values.items():
            last = get(url, "data/plugin/scalars/scalars", run=run, tag=tag)[-1][2]
            assert value == pytest.approx(last, rel=1e-6), tag
        final = {**{k: v for k, v in epochs[-1].items() if k.startswith("val/")},
                 **{k: v for k, v in tested.items() if k.startswith("test/")}}
        for name, expected in final.items():  # val/acc ... test/f1: each shown, by any tag naming split and metric
            split, metric = name.split("/")
            shown = [v for tag, v in values.items() if split in tag and tag.endswith(metric)]
            assert shown and shown[0] == pytest.approx(expected, rel=1e-6), (name, values)
