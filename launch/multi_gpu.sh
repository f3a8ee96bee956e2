#!/usr/bin/env bash
# launch/multi_gpu.sh: trains mnist_dist on several GPUs of one machine
# (tf.distribute.MirroredStrategy, one replica per GPU).
#
# Needs: this repo installed (pip install -e .) in the Python that PYTHON names
#   (default python3), with a GPU build of TensorFlow (pip install
#   'tensorflow[and-cuda]') and NVIDIA drivers. No cloud, no quota.
# Costs: nothing beyond your machine.
#
# Usage:
#   GPUS=0,1 launch/multi_gpu.sh [--dry-run] [--skip_selftest] --workdir=DIR [TRAINER ARGS...]
#   GPUS=0,1 launch/multi_gpu.sh --workdir=/tmp/run1 --config.data.dir=../shared/mnist \
#       --config.train.precision=mixed_float16
#   DRY_RUN=1 GPUS=0,1 launch/multi_gpu.sh --workdir=/tmp/run1
#
# Runs: CUDA_VISIBLE_DEVICES=$GPUS python3 -m mnist_dist.selftest
#   --out=DIR/selftest.json (the distributed math on these GPUs; a failed row
#   stops here, with its exit code; --skip_selftest skips it), then
#   CUDA_VISIBLE_DEVICES=$GPUS python3 -m mnist_dist.main --config=CONFIG
#   --config.distribution.strategy=mirrored TRAINER ARGS...
# GPUS: the GPU indices to use (CUDA_VISIBLE_DEVICES); unset: every visible
#   GPU. CONFIG: configs/conv_bn.py unless a --config=PATH is among the trainer
#   arguments (it is moved first: overrides must follow it). The global batch
#   (train.global_batch_size, 64 in conv_bn) must divide by the GPU count.
#   --config.train.precision=mixed_float16 trains in float16 with dynamic loss
#   scaling (fast on GPUs with tensor cores). --dry-run (or DRY_RUN=1) prints
#   the command after "+ " instead of running it. Exit code: the trainer's
#   (75: interrupted after a checkpoint; run the same command to resume).

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=launch/_lib.sh
source "$HERE/_lib.sh"
lib_init multi_gpu.sh "${BASH_SOURCE[0]}" "$@"
split_config_arg "${ARGS[@]+"${ARGS[@]}"}"

PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG_ARG:-${CONFIG:-$REPO/configs/conv_bn.py}}
[[ -f $CONFIG ]] || die "no config file $CONFIG"

ENVIRONMENT=()
if [[ -n ${GPUS:-} ]]; then
  [[ $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] ||
    die "GPUS=$GPUS: give GPU indices separated by commas, e.g. GPUS=0,1"
  ENVIRONMENT=(env CUDA_VISIBLE_DEVICES="$GPUS")
fi

if [[ $SKIP_SELFTEST != 1 ]]; then
  WORKDIR=$(option_value workdir "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}")
  SELFTEST=("${ENVIRONMENT[@]+"${ENVIRONMENT[@]}"}" "$PYTHON" -m mnist_dist.selftest)
  [[ -n $WORKDIR ]] && SELFTEST+=(--out="${WORKDIR%/}/selftest.json")
  run "${SELFTEST[@]}" || {
    status=$?
    note "the self-test failed (exit $status; its table is above): not training. --skip_selftest trains without it"
    exit "$status"
  }
fi
run_exec "${ENVIRONMENT[@]+"${ENVIRONMENT[@]}"}" "$PYTHON" -m mnist_dist.main \
  --config="$CONFIG" --config.distribution.strategy=mirrored \
  "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}"
