#!/usr/bin/env bash
# Redraws docs/tensorboard.png, the README's picture of TensorBoard's CUSTOM SCALARS tab on a finished run:
#
#   HARNESS_DATA_DIR=../shared/data python -m harness.train recipes/mnist_mlp.yaml logging.root=/tmp/shot
#   docs/screenshot.sh /tmp/shot docs/tensorboard.png
#
# Needs TensorBoard (a harness dependency) and, for the picture only, Debian's chromium and pngquant
# (`apt-get install chromium pngquant`): documentation tools, not dependencies of the harness.
# Chromium is driven over its DevTools pipe (Python's standard library only) because two settings of the
# page are needed for a faithful picture: smoothing 0 (the URL can say so) and "ignore outliers in chart
# scaling" off (kept in the page's localStorage, which a plain `chromium --screenshot` cannot set; with it
# on, the first epoch's training loss is cut off the chart). The pointer rests on the loss chart, so the
# tooltip names the two curves and their values at one step.
set -euo pipefail

logdir=${1:?usage: docs/screenshot.sh LOGDIR [OUT.png]}
out=${2:-docs/tensorboard.png}
python=${PYTHON:-python}
scratch=$(mktemp -d)

# --port 0: the server binds a free port itself and prints the URL; no port is guessed.
TMPDIR=$scratch "$python" -m tensorboard.main --logdir "$logdir" --host 127.0.0.1 --port 0 2>"$scratch/stderr" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$scratch"' EXIT

url=
for _ in $(seq 600); do  # up to 60 s for the server to come up
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*/' "$scratch/stderr" || true)
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$scratch/stderr" >&2; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "tensorboard printed no URL" >&2; cat "$scratch/stderr" >&2; exit 1; }
for _ in $(seq 300); do  # up to 60 s for its first read of the event files
    curl -s "${url}data/plugin/custom_scalars/layout" | grep -q 'train/loss' && break
    sleep 0.2
done

"$python" - "${url}#custom_scalars&_smoothingWeight=0" "$scratch/shot.png" <<'EOF'
import base64, itertools, json, os, subprocess, sys

url, out = sys.argv[1], sys.argv[2]
WIDTH, HEIGHT = 1100, 740  # CSS pixels: the side bar and two columns of charts, the loss chart first
POINTER = (560, 250)       # over the loss chart, at step 3

commands, results = os.pipe(), os.pipe()  # DevTools pipe: chromium reads fd 3, writes fd 4

def as_fds_3_and_4():
    read_end, write_end = os.dup(commands[0]), os.dup(results[1])
    os.dup2(read_end, 3)
    os.dup2(write_end, 4)

chrome = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--remote-debugging-pipe", f"--window-size={WIDTH},{HEIGHT}"],
                          preexec_fn=as_fds_3_and_4, close_fds=False, stderr=subprocess.DEVNULL)
os.close(commands[0]); os.close(results[1])
ids, pending = itertools.count(1), b""

def receive():
    global pending
    while b"\0" not in pending:
        chunk = os.read(results[0], 1 << 20)
        if not chunk:
            sys.exit("chromium closed its DevTools pipe")
        pending += chunk
    message, pending = pending.split(b"\0", 1)
    return json.loads(message)

def call(method, session=None, **params):
    number = next(ids)
    os.write(commands[1], json.dumps({"id": number, "method": method, "params": params,
                                      **({"sessionId": session} if session else {})}).encode() + b"\0")
    while (message := receive()).get("id") != number:
        pass
    if "error" in message:
        sys.exit(f"{method}: {message['error']}")
    return message["result"]

def until(event, session):
    while not (message := receive()).get("method") == event or message.get("sessionId") != session:
        pass

def navigate(session, address):
    call("Page.navigate", session, url=address)
    until("Page.loadEventFired", session)

def run_for(session, milliseconds):
    """Let the page's scripts and requests run for this long in virtual time (waiting out its fetches)."""
    call("Emulation.setVirtualTimePolicy", session, policy="pauseIfNetworkFetchesPending", budget=milliseconds)
    until("Emulation.virtualTimeBudgetExpired", session)

target = call("Target.createTarget", url="about:blank")["targetId"]
page = call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
call("Page.enable", page)
call("Emulation.setDeviceMetricsOverride", page, width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
navigate(page, url.split("#")[0] + "data/plugins_listing")  # any page of the server's origin: its localStorage
call("Runtime.evaluate", page, expression="localStorage.setItem('_ignoreYOutliers', 'false')")
navigate(page, url)
run_for(page, 15000)
call("Input.dispatchMouseEvent", page, type="mouseMoved", x=POINTER[0], y=POINTER[1])
run_for(page, 1000)  # the tooltip
with open(out, "wb") as f:
    f.write(base64.b64decode(call("Page.captureScreenshot", page, format="png")["data"]))
chrome.terminate()
chrome.wait()
EOF
pngquant --force --quality 60-90 --output "$out" "$scratch/shot.png"
echo "$out: $(stat -c %s "$out") bytes"
