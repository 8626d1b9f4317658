#!/usr/bin/env bash
# bash benchmarks/gpu_check.sh        (on a machine with one or more CUDA GPUs; ~6-8 min on one GPU)
#
# The GPU figures the CPU machines cannot give, in one run:
#   1. 224 px bf16 training: images/s, peak memory and MFU of the production worker against a plain
#      PyTorch loop (benchmarks/train_throughput.py); with several GPUs also 1..N DDP workers and the
#      scaling per GPU.
#   2. the per-trial overhead of a one-GPU trial, in the trial's own process and through a TorchTrainer
#      (benchmarks/tune_overhead.py --gpu; with 2+ GPUs also a 2-GPU DDP trial).
#   3. the wall time of a 4-trial 224 px study (jobs/tune.py on synthetic FracAtlas-layout data:
#      Optuna + ASHA, MLflow, registration), as a user runs one.
# Everything it writes goes to a temporary directory, removed at the end. PY=... picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then
    echo "error: no CUDA GPU visible to torch (torch.cuda.device_count() = 0)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "GPUs: $GPUS; CPUs: $(nproc); $("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"

step() { printf '\n== %s (%s)\n' "$1" "$(date +%T)"; }

step "1. 224 px bf16 training throughput, MFU$( [ "$GPUS" -gt 1 ] && echo ", scaling over 1..$GPUS GPUs")"
WORKERS=$(seq -s, 1 "$GPUS")
"$PY" benchmarks/train_throughput.py --n 2000 --image-size 224 --epochs 3 --workers "$WORKERS"

step "2. per-trial overhead of one-GPU trials"
RUNNERS=in_trial,trainer
[ "$GPUS" -gt 1 ] && RUNNERS=$RUNNERS,ddp
"$PY" benchmarks/tune_overhead.py --gpu --runners "$RUNNERS"

step "3. a 4-trial study at 224 px (synthetic data, 1000 images, 3 epochs, ASHA)"
"$PY" jobs/make_synthetic.py --out "$TMP/data" --n 1000 --min-size 373 --max-size 454
START=$(date +%s)
"$PY" jobs/tune.py --config jobs/studies/demo.yaml name=gpu_check \
    data.root="$TMP/data" data.image_size=224 cluster.storage_path="$TMP/runs" \
    cluster.use_gpu=true cluster.cpus_per_worker=4 search.max_concurrent="$GPUS" \
    train.batch_size_per_worker=64 tracking.experiment=gpu_check
echo "4-trial 224 px study: $(( $(date +%s) - START )) s wall, $GPUS GPU(s), from the job's start to its summary"
