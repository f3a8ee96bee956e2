#!/usr/bin/env bash
# launch/tpu_vm.sh: trains mnist_dist on a Cloud TPU VM (one host) or a TPU pod
# slice (several hosts), then copies the workdir back and deletes the TPU.
#
# Needs: the gcloud CLI, logged in (gcloud auth login), with `ssh-add
#   ~/.ssh/google_compute_engine` done (gcloud's advice for --worker=all; the
#   key is made by your first `gcloud compute ssh` or `tpus tpu-vm ssh`);
#   a GCP project with the Cloud TPU API enabled and TPU quota for
#   ACCELERATOR_TYPE in ZONE (v4 is in us-central2-b; v5e, v5p and v6e
#   elsewhere: `gcloud compute tpus tpu-vm accelerator-types list --zone=ZONE`);
#   a GCS bucket in or near ZONE that the TPU VM's service account (the
#   project's default Compute Engine one) can read and write.
# Costs: nothing until you run it with your project. Then: the TPU from the
#   create to the delete, per chip-hour (on-demand, or spot with SPOT=1; see
#   https://cloud.google.com/tpu/pricing; a v4-8 has 4 chips), plus the
#   bucket's storage. The TPU is deleted when the script ends, also when a
#   step fails or on Ctrl-C, unless KEEP_VM=1. A create that fails deletes
#   nothing (the name may belong to another TPU). Check `gcloud compute tpus
#   tpu-vm list --zone=ZONE` if in doubt.
#
# Usage:
#   PROJECT=my-project BUCKET=gs://my-bucket launch/tpu_vm.sh [--dry-run] [--skip_selftest] [TRAINER ARGS...]
#   DRY_RUN=1 PROJECT=p BUCKET=b launch/tpu_vm.sh --config.train.epochs=1
#   PROJECT=p BUCKET=b ACCELERATOR_TYPE=v4-32 DATA_DIR=gs://b/mnist launch/tpu_vm.sh
# --dry-run (or DRY_RUN=1) prints every command, one per line after "+ ",
# instead of running it. TRAINER ARGS go to `python -m mnist_dist.main`, e.g.
# --config=configs/conv.py or --config.train.precision=mixed_bfloat16.
# Before training, mnist-dist-selftest checks the distributed math on the TPU
# (WORKDIR/selftest.json); a failed row stops there, without training (the
# workdir is still copied back and the TPU deleted). --skip_selftest trains
# without it.
#
# Variables (environment):
#   PROJECT           required: the GCP project.
#   BUCKET            required unless WORKDIR is set: gs://BUCKET (or BUCKET).
#   NAME              the TPU's name (default mnist-dist-tpu). The same NAME
#                     (hence WORKDIR) again resumes the run from its checkpoint.
#   ZONE              default us-central2-b.
#   ACCELERATOR_TYPE  default v4-8 (one host); e.g. v5litepod-8, v4-32 (a pod
#                     slice: more than 8 in the name means several hosts).
#   TF_VERSION        the TensorFlow TPU build installed on the VM, default
#                     2.19.1: the last one Keras' own TPU requirements pin;
#                     it pins its libtpu (0.0.10), and CI tests TensorFlow
#                     2.19.1 (.ci/run). 2.20.0 asks for any libtpu ~=0.0.14,
#                     which pip resolves to the newest: untested pairs.
#   RUNTIME_VERSION   the VM image, default the plain one Google names for
#                     the TPU generation (TensorFlow images stop at 2.18):
#                     tpu-ubuntu2204-base up to v4, v2-alpha-tpuv5-lite (v5e),
#                     v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e).
#   TF_TPU_PIP        the pip arguments that install TensorFlow on the VM
#                     (default "tensorflow-tpu==$TF_VERSION", from PyPI).
#                     Set it to "" to keep an image's own TensorFlow, e.g.
#                     with RUNTIME_VERSION=tpu-vm-tf-2.18.0-pjrt.
#   POD               1 on a pod slice, 0 on one host (default: from the name).
#   WORKDIR           default gs://BUCKET/mnist_dist/NAME. Must be gs://: the
#                     TPU hosts (all of them, on a pod) write it.
#   DATA_DIR          the four MNIST IDX files (--config.data.dir). Empty:
#                     TFDS downloads MNIST on the VM (one host only). A pod
#                     needs it on gs://, e.g. after
#                     `gcloud storage cp ../shared/mnist/* gs://BUCKET/mnist/`.
#   OUT_DIR           where the workdir is copied back (default runs/NAME).
#   KEEP_VM=1         do not delete the TPU at the end.
#   SPOT=1            create a spot TPU (cheaper, may be preempted: then run
#                     the same command again; training resumes from WORKDIR).
#   TRAIN_WORKER      the host(s) that run the trainer (default: all on one
#                     host, 0 on a pod slice; see below).
#   TRAIN_ENV         extra VAR=value words for the trainer's environment.
#
# One host vs. a pod slice: on one host the trainer runs with
# --config.distribution.tpu=local. On a pod slice TensorFlow's TPUStrategy is
# one client for all hosts: the trainer runs on worker 0 only, with
# --config.distribution.tpu=NAME and TPU_LOAD_LIBRARY=0, and reaches every
# host's TPU runtime over the network (as Google's own TF-on-TPU CI,
# GoogleCloudPlatform/ml-auto-solutions, runs pod slices). Copying and the
# install still go to --worker=all. Data and workdir must then be on gs://.
# Exit code: the self-test's when a row fails (1), the trainer's when it fails
# (75: interrupted after a checkpoint, run again to resume), 2 for a bad
# variable, else the failing step's.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=launch/_lib.sh
source "$HERE/_lib.sh"
lib_init tpu_vm.sh "${BASH_SOURCE[0]}" "$@"
split_config_arg "${ARGS[@]+"${ARGS[@]}"}"

require PROJECT 'export PROJECT=your-gcp-project'
NAME=${NAME:-mnist-dist-tpu}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
TF_VERSION=${TF_VERSION:-2.19.1}
TF_TPU_PIP=${TF_TPU_PIP-tensorflow-tpu==$TF_VERSION}
KEEP_VM=${KEEP_VM:-0}
SPOT=${SPOT:-0}
TRAIN_ENV=${TRAIN_ENV:-}
CONFIG=${CONFIG_ARG:-${CONFIG:-configs/conv_bn.py}}
DATA_DIR=${DATA_DIR:-}
OUT_DIR=${OUT_DIR:-runs/$NAME}

[[ $NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
  die "NAME=$NAME: a TPU name is lowercase letters, digits and '-', starting with a letter"
[[ $ACCELERATOR_TYPE =~ ^v[0-9]+[a-z]*-([0-9]+)$ ]] ||
  die "ACCELERATOR_TYPE=$ACCELERATOR_TYPE is not like v4-8 or v5litepod-8"
if [[ -z ${POD:-} ]]; then
  # Every type up to -8 is one host (v2-8, v3-8, v4-8, v5p-8, v5litepod-8, v6e-8).
  POD=0
  ((BASH_REMATCH[1] > 8)) && POD=1
fi
[[ $POD == 0 || $POD == 1 ]] || die "POD=$POD must be 0 or 1"
case $ACCELERATOR_TYPE in
  v5litepod-* | v5e-*) RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5-lite} ;;
  v5p-*) RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5} ;;
  v6e-*) RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv6e} ;;
  *) RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base} ;;
esac
if [[ $POD == 1 ]]; then
  TRAIN_WORKER=${TRAIN_WORKER:-0}
else
  TRAIN_WORKER=${TRAIN_WORKER:-all}
fi

if [[ -z ${WORKDIR:-} ]]; then
  require BUCKET 'export BUCKET=gs://your-bucket (or set WORKDIR=gs://...)'
  BUCKET=${BUCKET#gs://}
  BUCKET=${BUCKET%/}
  WORKDIR=gs://$BUCKET/mnist_dist/$NAME
fi
[[ $WORKDIR == gs://?* ]] ||
  die "WORKDIR=$WORKDIR must be a gs:// path: the TPU hosts write it and it is copied back from there"
WORKDIR=${WORKDIR%/}
if [[ $POD == 1 && $DATA_DIR != gs://?* ]]; then
  die "DATA_DIR=${DATA_DIR:-(empty)}: a pod slice ($ACCELERATOR_TYPE) reads the data on every host, so DATA_DIR must be a gs:// folder with the four MNIST IDX files"
fi

# The config file is copied with the repo: it is given relative to the repo.
[[ $CONFIG == "$REPO"/* ]] && CONFIG=${CONFIG#"$REPO"/}
[[ $CONFIG != /* ]] ||
  die "the config $CONFIG must be inside the repo ($REPO): the repo is what is copied to the TPU"
[[ -f $REPO/$CONFIG ]] || die "no config file $REPO/$CONFIG"

if ! is_dry_run; then
  command -v gcloud >/dev/null ||
    die 'gcloud is not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run gcloud auth login'
fi

TARBALL=${TMPDIR:-/tmp}/mnist_dist-$NAME.tar.gz
REMOTE_TARBALL=mnist_dist.tar.gz
REMOTE_DIR=mnist_dist
TPU_FLAGS=(--project="$PROJECT" --zone="$ZONE")

# --- the remote commands (run by the VM's login shell) ---
INSTALL_CMD="rm -rf $REMOTE_DIR && mkdir $REMOTE_DIR && tar -xzf $REMOTE_TARBALL -C $REMOTE_DIR && cd $REMOTE_DIR && TF_TPU_PIP=$(shell_quote "$TF_TPU_PIP") bash launch/tpu_vm_remote.sh install"
TRAIN_ARGS=(--config="$CONFIG" --workdir="$WORKDIR")
[[ -n $DATA_DIR ]] && TRAIN_ARGS+=(--config.data.dir="$DATA_DIR")
TRAIN_ARGS+=(--config.distribution.strategy=tpu)
REMOTE_ENV=''
if [[ $POD == 1 ]]; then
  TRAIN_ARGS+=(--config.distribution.tpu="$NAME")
  REMOTE_ENV="TPU_POD=1 TPU_NAME=$(shell_quote "$NAME") "
fi
TRAIN_ARGS+=("${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}")
TRAIN_CMD="cd $REMOTE_DIR && ${REMOTE_ENV}${TRAIN_ENV:+$TRAIN_ENV }bash launch/tpu_vm_remote.sh train $(shell_join "${TRAIN_ARGS[@]}")"
SELFTEST_ARGS=(--out="$WORKDIR/selftest.json")
[[ $POD == 1 ]] && SELFTEST_ARGS+=(--tpu="$NAME")
SELFTEST_CMD="cd $REMOTE_DIR && ${REMOTE_ENV}${TRAIN_ENV:+$TRAIN_ENV }bash launch/tpu_vm_remote.sh selftest $(shell_join "${SELFTEST_ARGS[@]}")"

# --- clean-up, on every exit: deletes the TPU once it exists, or when the
# script is interrupted while creating it (the creation goes on without us).
# A create that fails (e.g. no capacity, or a TPU of that name exists
# already) deletes nothing: that name may be someone else's TPU.
VM_STATE=none
DELETE_CMD=(gcloud compute tpus tpu-vm delete "$NAME" "${TPU_FLAGS[@]}" --quiet)

cleanup() {
  local status=$?
  trap - EXIT
  is_dry_run || rm -f "$TARBALL"
  if [[ $VM_STATE == create-failed ]]; then
    note "the create failed: nothing deleted. If a TPU $NAME is listed by gcloud compute tpus tpu-vm list $(shell_join "${TPU_FLAGS[@]}") and is yours, delete it with: $(shell_join "${DELETE_CMD[@]}")"
  elif [[ $VM_STATE == creating || $VM_STATE == created ]]; then
    if [[ $KEEP_VM == 1 ]]; then
      note "KEEP_VM=1: $NAME is left running and billed; delete it with: $(shell_join "${DELETE_CMD[@]}")"
    elif ! run "${DELETE_CMD[@]}"; then
      note "error: could not delete the TPU $NAME; it is billed until deleted: check with gcloud compute tpus tpu-vm list $(shell_join "${TPU_FLAGS[@]}") and run: $(shell_join "${DELETE_CMD[@]}")"
      ((status)) || status=1
    fi
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the steps ---
note "$ACCELERATOR_TYPE ($([[ $POD == 1 ]] && echo "pod slice, trainer on worker $TRAIN_WORKER" || echo 'one host')) $NAME in $ZONE, runtime $RUNTIME_VERSION, workdir $WORKDIR"
run tar -czf "$TARBALL" --exclude=.git --exclude=.venv --exclude=__pycache__ \
  --exclude='*.egg-info' --exclude=.pytest_cache --exclude=./build \
  --exclude=./dist --exclude=./runs --exclude='*ubyte*' -C "$REPO" .

CREATE_CMD=(gcloud compute tpus tpu-vm create "$NAME" "${TPU_FLAGS[@]}"
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
[[ $SPOT == 1 ]] && CREATE_CMD+=(--spot)
VM_STATE=creating
run "${CREATE_CMD[@]}" || {
  status=$?
  VM_STATE=create-failed
  exit "$status"
}
VM_STATE=created

run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:$REMOTE_TARBALL" \
  "${TPU_FLAGS[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$NAME" "${TPU_FLAGS[@]}" --worker=all \
  --command="$INSTALL_CMD"

selftest_status=0
if [[ $SKIP_SELFTEST != 1 ]]; then
  run gcloud compute tpus tpu-vm ssh "$NAME" "${TPU_FLAGS[@]}" \
    --worker="$TRAIN_WORKER" --command="$SELFTEST_CMD" || selftest_status=$?
fi
train_status=0
if ((selftest_status)); then
  note "the self-test failed (exit $selftest_status): not training; its table is in $WORKDIR/selftest.json, copied back below. --skip_selftest trains without it"
  train_status=$selftest_status
else
  run gcloud compute tpus tpu-vm ssh "$NAME" "${TPU_FLAGS[@]}" \
    --worker="$TRAIN_WORKER" --command="$TRAIN_CMD" || train_status=$?
  if ((train_status == 75)); then
    note "the trainer was interrupted after saving a checkpoint (exit 75): run the same command again to resume from $WORKDIR"
  elif ((train_status)); then
    note "the training step failed (exit $train_status); copying back what the workdir holds"
  fi
fi

copy_status=0
run mkdir -p "$OUT_DIR"
run gcloud storage cp -r "$WORKDIR" "$OUT_DIR/" || copy_status=$?
((train_status)) && exit "$train_status"
((copy_status)) && exit "$copy_status"
if is_dry_run; then
  note 'dry run: nothing was run'
else
  note "done: the workdir is in $OUT_DIR/$(basename "$WORKDIR") (and stays in $WORKDIR)"
fi
