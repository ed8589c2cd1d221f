#!/usr/bin/env bash
# The harness's CUDA paths in one run: about 7 minutes on one GPU (sized for an H200), results as files.
#
#   bash benchmarks/gpu_check.sh [--cpu] [OUT]      from the repository root; OUT defaults to $OUT, else gpu-check-out
#
# What it measures, one file (or a few) each under OUT, and summary.txt (every step: ok / FAILED / skipped, seconds):
#   env.txt            GPU, driver, torch and CUDA versions
#   sync_<p>.txt       calls that make the host wait for the GPU, per source line, over 200 training steps (with EMA)
#                      at precision 32, bf16 and 16; expected: about one per 50 steps (the progress refresh), none
#                      from the GradScaler at 16 (fused SGD/Adam/AdamW take its inf flag on the device)
#   sync_text.txt      the same for the GPT recipe on a fake text, 3 batches accumulated per step (each batch's loss
#                      weighted by its share of the group's tokens, counted on the device): expected the same
#   speed.txt          epoch 2 of the MNIST CNN at 32 / bf16 / 16 / bf16 + channels_last / compiled (a short last
#                      batch and none), and of the CIFAR-10 ResNet with and without EMA: history.jsonl's epoch line
#   recompiles_*.txt   Dynamo's recompile log of the compiled runs (expected: none after the first graphs)
#   graphs.txt         Dynamo graphs of a compiled run with a short last batch (one for training, one for validation)
#   compare.txt        harness.compare of the MLP and the CNN: speed and peak memory columns on CUDA
#   nccl.txt           which tensors an NCCL collective takes (CUDA ones; a CPU tensor is refused)
#   loader.txt         TensorLoader batches on the GPU against the CPU (max |diff|, targets equal)
#   eval_<p>.txt       harness.evaluate --speed of one checkpoint at precision 32 and bf16
#   resume.txt         2 epochs straight against 1 + resume + 1 (dropout), deterministic on and off: max |weight diff|
#   cuda_tests.txt     the suite's tests that skip without CUDA, run with pytest -rs
#
# Without a GPU (or with --cpu) it runs what a CPU can on small fake data, so the script itself is checked
# anywhere: no sync audit or NCCL check (they say "skipped"), no fp16, compile only for the graph count
# (with Dynamo's eager backend: Inductor's compile time on a small CPU would be the whole run).
# Data: fake MNIST / CIFAR-10 files (tests/conftest.py) under a temporary folder; runs go there too.
set -u
cd "$(dirname "$0")/.."
CPU=0
if [ "${1:-}" = "--cpu" ]; then CPU=1; shift; fi
O=$(realpath -m "${1:-${OUT:-gpu-check-out}}")
mkdir -p "$O"
PY=${PYTHON:-python}
if [ $CPU = 0 ] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA device: running the CPU-possible parts on small data" | tee "$O/summary.txt"; CPU=1
else
  : > "$O/summary.txt"
fi
TMP=$(mktemp -d); D=$TMP/data; R=$TMP/runs
trap 'rm -rf "$TMP"' EXIT
export HARNESS_DATA_DIR=$D
C="data.root=$D logging.root=$R trainer.progress=false"
if [ $CPU = 1 ]; then
  DEVICE=cpu; PRECISIONS="32 bf16"; SMALL=--small; SPLIT=data.val_size=500; EPOCH="trainer.limit_train_batches=20 $SPLIT"
  RESUME_LIMIT=5
else
  DEVICE=cuda; PRECISIONS="32 bf16 16"; SMALL=; SPLIT=; EPOCH=; RESUME_LIMIT=100
fi

# step NAME LIMIT_S COMMAND...: run it with a time limit, output to $O/NAME.txt, a line in summary.txt
step() {
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$O/$name.txt" 2>&1
  local rc=$?
  local status=ok; [ $rc = 0 ] || status="FAILED (exit $rc)"
  if grep -q "^skipped: " "$O/$name.txt"; then status="skipped: $(grep -m1 '^skipped: ' "$O/$name.txt" | cut -c10-)"; fi
  printf '%-22s %-40s %4ds\n' "$name" "$status" $((SECONDS - started)) | tee -a "$O/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  nproc; } > "$O/env.txt" 2>&1
step fake_data 300 $PY benchmarks/gpu_check.py fake-data "$D" $SMALL

# 1. host syncs per step, per source line
for p in $PRECISIONS; do
  step "sync_$p" 180 $PY benchmarks/gpu_check.py sync-audit recipes/mnist.yaml $C trainer.epochs=1 \
    trainer.limit_train_batches=200 trainer.precision=$p "trainer.ema={decay: 0.999}" logging.name=sync$p
done

step sync_text 180 $PY benchmarks/gpu_check.py sync-audit recipes/shakespeare_char.yaml $C data.path=text.txt \
  model.args.vocab_size=27 trainer.max_steps=200 trainer.val_every_n_steps=100 scheduler.warmup_steps=10 \
  trainer.accumulate_grad_batches=3 \
  logging.sample=null logging.name=synctext

# 2. speed: the second epoch's line of history.jsonl (epoch_seconds, samples_per_s)
train() {  # train NAME RECIPE OVERRIDES...
  local name=$1 recipe=$2; shift 2
  step "train_$name" 300 $PY -m harness.train "recipes/$recipe.yaml" $C trainer.device=$DEVICE trainer.epochs=2 \
    logging.name=$name $EPOCH "$@"
  echo "$name $(head -n 2 "$R/$name"/*/history.jsonl 2>/dev/null | tail -n 1)" >> "$O/speed.txt"
}
: > "$O/speed.txt"
for p in $PRECISIONS; do train "cnn$p" mnist trainer.precision=$p; done
train cnnbf16cl mnist trainer.precision=bf16 trainer.channels_last=true
if [ $CPU = 0 ]; then
  TORCH_LOGS=recompiles train cnncompile128 mnist trainer.compile=true                     # 55000 = 429 x 128 + 88
  TORCH_LOGS=recompiles train cnncompile125 mnist trainer.compile=true data.batch_size=125  # 440 x 125: no short batch
  cp "$O/train_cnncompile128.txt" "$O/recompiles_128.txt"; cp "$O/train_cnncompile125.txt" "$O/recompiles_125.txt"
  train resnet cifar10_resnet scheduler.warmup_epochs=0
  train resnetema cifar10_resnet scheduler.warmup_epochs=0 "trainer.ema={decay: 0.999}"
  step graphs 300 $PY benchmarks/gpu_check.py graphs "$D" "$R"
else
  step graphs 300 $PY benchmarks/gpu_check.py graphs "$D" "$R" --backend eager
fi
step compare 300 $PY -m harness.compare recipes/mnist_mlp.yaml recipes/mnist.yaml --set trainer.epochs=1 \
  --set "data.root=$D" --set "logging.root=$R" --set trainer.device=$DEVICE --set trainer.progress=false \
  $(for o in $EPOCH; do echo --set "$o"; done)

# 3. NCCL: which tensors a collective takes
step nccl 120 $PY -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_check.py nccl

# 4. loader numerics, CPU against the GPU
step loader 120 $PY benchmarks/gpu_check.py loader-numerics

# 5. evaluate --speed at 32 and bf16, one checkpoint
K=$(ls "$R"/cnn32/*/checkpoints/best.pt 2>/dev/null | head -n 1)
for p in 32 bf16; do
  step "eval_$p" 180 $PY -m harness.evaluate recipes/mnist.yaml --checkpoint "${K:-missing-checkpoint}" $C \
    trainer.device=$DEVICE trainer.precision=$p $SPLIT --speed
done

# 6. exact resume, deterministic on and off
for det in true false; do
  step "resume_$det" 300 $PY benchmarks/gpu_check.py resume "$D" "$R" $det --limit $RESUME_LIMIT
done
cat "$O"/resume_*.txt > "$O/resume.txt"

# 7. the suite's tests that skip without CUDA (on a CPU: listed as skipped, with their reason)
TESTS=$(grep -n -A4 "skipif(not torch.cuda.is_available()" tests/*.py | grep -o "tests/[a-z_]*\.py-[0-9]*-def test_[a-z0-9_]*" \
  | sed 's/-[0-9]*-def /::/' | sort -u)
step cuda_tests 300 $PY -m pytest -q -rs -p no:cacheprovider $TESTS

echo "results in $O"
