#!/usr/bin/env bash
# launch/vertex.sh: trains mnist_dist on Vertex AI custom training (the managed
# service): builds the package, uploads it and the config to the bucket, fills
# in launch/vertex_job.yaml or launch/vertex_hptune.yaml and submits it.
#
# Needs: the gcloud CLI, logged in; a GCP project with the Vertex AI API
#   enabled (gcloud services enable aiplatform.googleapis.com); a GCS bucket in
#   or near REGION that Vertex AI's service agent can read and write; for
#   `job` as written, quota for 2 NVIDIA T4 GPUs in custom training in REGION
#   (none needed for `hptune`: CPU trials); the `build` package in PYTHON
#   (pip install build), which builds the sdist.
# Costs: nothing until you run it with your project. Then: the machines while
#   the job or the trials run (`job`: 2 x n1-standard-8 + 1 T4 each, for a few
#   minutes; `hptune`: 6 trials of one n1-standard-8), and the bucket's storage.
#   The job runs on after this script returns: follow or cancel it with
#   `gcloud ai custom-jobs list|stream-logs|cancel --region=REGION` (or
#   `gcloud ai hp-tuning-jobs ...`).
#
# Usage:
#   PROJECT=my-project BUCKET=gs://my-bucket launch/vertex.sh [--dry-run] [--skip_selftest] job|hptune [TRAINER ARGS...]
#   PROJECT=p BUCKET=b DATA_DIR=gs://b/mnist launch/vertex.sh job --config.train.epochs=3
#   DRY_RUN=1 PROJECT=p BUCKET=b launch/vertex.sh hptune
# --dry-run (or DRY_RUN=1) prints every command after "+ " instead of running
# it (the spec is still filled in, locally, so that it can be read). TRAINER
# ARGS are added to the spec's trainer arguments (--config=PATH picks the
# config file, which is uploaded). A job's replicas each run mnist-dist-selftest
# on their own GPU before training and stop on a failed row (the tables go to
# the workdir: selftest.json from the chief); --skip_selftest trains without
# it. (Tuning trials do not run it.)
#
# Variables (environment):
#   PROJECT        required: the GCP project.
#   BUCKET         required: gs://BUCKET (or BUCKET) for the package, config,
#                  workdir and Vertex AI's outputs.
#   REGION         default us-central1.
#   DATA_DIR       gs:// folder with the four MNIST IDX files; empty: the
#                  trainer downloads MNIST with TFDS in each replica.
#   RUN_ID         default: the UTC date and time; everything goes under
#                  gs://BUCKET/mnist_dist/vertex/RUN_ID/ (the job's workdir is
#                  .../workdir, each trial's .../workdir/trial_ID).
#   DISPLAY_NAME   default mnist-dist-MODE-RUN_ID.
#   JOB_SPEC, HPTUNE_SPEC   the YAML files (default launch/vertex_*.yaml).
#   WORK_DIR       local folder for the sdist and the filled-in spec (default:
#                  a new temporary folder; it is kept, and named at the end).
#   PYTHON         default python3.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# shellcheck source=launch/_lib.sh
source "$HERE/_lib.sh"
lib_init vertex.sh "${BASH_SOURCE[0]}" "$@"
set -- "${ARGS[@]+"${ARGS[@]}"}"

MODE=${1:-}
case "$MODE" in
  job) SPEC=${JOB_SPEC:-$HERE/vertex_job.yaml} ;;
  hptune)
    SPEC=${HPTUNE_SPEC:-$HERE/vertex_hptune.yaml}
    [[ $SKIP_SELFTEST != 1 ]] ||
      die '--skip_selftest is for job: tuning trials do not run the self-test'
    ;;
  *) die "first argument: job or hptune, not '${MODE}' (usage: vertex.sh --help)" ;;
esac
shift
split_config_arg "$@"

require PROJECT 'export PROJECT=your-gcp-project'
require BUCKET 'export BUCKET=gs://your-bucket'
BUCKET=${BUCKET#gs://}
BUCKET=${BUCKET%/}
[[ $BUCKET =~ ^[a-z0-9][-a-z0-9_.]*[a-z0-9]$ ]] ||
  die "BUCKET=$BUCKET is not a bucket name (gs://NAME or NAME)"
REGION=${REGION:-us-central1}
DATA_DIR=${DATA_DIR:-}
[[ -z $DATA_DIR || $DATA_DIR == gs://?* ]] ||
  die "DATA_DIR=$DATA_DIR must be a gs:// folder: the job runs in Google's machines, not here"
RUN_ID=${RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}
[[ $RUN_ID =~ ^[A-Za-z0-9_.-]+$ ]] || die "RUN_ID=$RUN_ID: use letters, digits, '.', '_' and '-'"
DISPLAY_NAME=${DISPLAY_NAME:-mnist-dist-$MODE-$RUN_ID}
PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG_ARG:-${CONFIG:-configs/conv_bn.py}}
[[ $CONFIG == /* ]] || CONFIG=$REPO/$CONFIG
[[ -f $CONFIG ]] || die "no config file $CONFIG"
[[ -f $SPEC ]] || die "no spec file $SPEC"
for arg in "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}"; do
  [[ $arg != *$'\n'* ]] || die 'a trainer argument holds a newline'
done

if ! is_dry_run; then
  command -v gcloud >/dev/null ||
    die 'gcloud is not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) and run gcloud auth login'
  "$PYTHON" -c 'import build' 2>/dev/null ||
    die "$PYTHON has no 'build' package, which builds the sdist: $PYTHON -m pip install build"
fi

WORK_DIR=${WORK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/mnist_dist_vertex.XXXXXX")}
mkdir -p "$WORK_DIR"
PREFIX=mnist_dist/vertex/$RUN_ID
STAGING_URI=gs://$BUCKET/$PREFIX
WORKDIR=$STAGING_URI/workdir
CONFIG_NAME=$(basename "$CONFIG")

# --- 1. the sdist ---
DIST_DIR=$WORK_DIR/dist
is_dry_run || rm -rf "$DIST_DIR"
run "$PYTHON" -m build --sdist --outdir "$DIST_DIR" "$REPO"
if is_dry_run; then
  version=$(awk -F' *= *' '$1 == "version" { print $2; exit }' "$REPO/setup.cfg")
  SDIST=$DIST_DIR/mnist_dist-$version.tar.gz
else
  shopt -s nullglob
  sdists=("$DIST_DIR"/*.tar.gz)
  shopt -u nullglob
  ((${#sdists[@]} == 1)) ||
    die "expected one sdist (*.tar.gz) in $DIST_DIR, found ${#sdists[@]}"
  SDIST=${sdists[0]}
fi
SDIST_NAME=$(basename "$SDIST")

# --- 2. upload the package and the config ---
run gcloud storage cp "$SDIST" "$STAGING_URI/$SDIST_NAME"
run gcloud storage cp "$CONFIG" "$STAGING_URI/configs/$CONFIG_NAME"

# --- 3. fill in the spec ---
yaml_escape() {
  local text=$1
  text=${text//\\/\\\\}
  text=${text//\"/\\\"}
  printf '%s' "$text"
}

PLACEHOLDERS=(PACKAGE_PATH CONFIG_PATH WORKDIR DATA_DIR STAGING_URI SELFTEST)
placeholder_value() {
  case "$1" in
    PACKAGE_PATH) printf '%s' "/gcs/$BUCKET/$PREFIX/$SDIST_NAME" ;;
    CONFIG_PATH) printf '%s' "/gcs/$BUCKET/$PREFIX/configs/$CONFIG_NAME" ;;
    WORKDIR) printf '%s' "$WORKDIR" ;;
    DATA_DIR) printf '%s' "$DATA_DIR" ;;
    STAGING_URI) printf '%s' "$STAGING_URI" ;;
    SELFTEST) printf '%s' "$((1 - SKIP_SELFTEST))" ;;
  esac
}

# Copies the spec, with each "{{KEY}}" replaced by its value (YAML-escaped:
# the placeholders sit in double-quoted strings) and each list item
# - "{{EXTRA_ARGS}}" replaced by one item per trainer argument.
render_spec() {
  local line indent arg key value
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^([[:space:]]*)-[[:space:]]+\"\{\{EXTRA_ARGS\}\}\"[[:space:]]*$ ]]; then
      indent=${BASH_REMATCH[1]}
      for arg in "${TRAINER_ARGS[@]+"${TRAINER_ARGS[@]}"}"; do
        printf '%s- "%s"\n' "$indent" "$(yaml_escape "$arg")"
      done
      continue
    fi
    for key in "${PLACEHOLDERS[@]}"; do
      if [[ $line == *"{{$key}}"* ]]; then
        value=$(yaml_escape "$(placeholder_value "$key")")
        line=${line//"{{$key}}"/"$value"}
      fi
    done
    printf '%s\n' "$line"
  done
}

RENDERED=$WORK_DIR/$(basename "$SPEC")
render_spec < "$SPEC" > "$RENDERED"
if grep -n '{{[A-Z_]*}}' "$RENDERED" >&2; then
  die "$RENDERED: placeholders left unfilled (above); vertex.sh knows: ${PLACEHOLDERS[*]} EXTRA_ARGS"
fi
note "the filled-in spec: $RENDERED"

# --- 4. submit ---
SUBMIT_FLAGS=(--project="$PROJECT" --region="$REGION" --display-name="$DISPLAY_NAME" --config="$RENDERED")
if [[ $MODE == job ]]; then
  run gcloud ai custom-jobs create "${SUBMIT_FLAGS[@]}"
  follow="gcloud ai custom-jobs list --project=$PROJECT --region=$REGION (then stream-logs JOB_ID); the workdir will be $WORKDIR (copy it with: gcloud storage cp -r $WORKDIR .)"
else
  run gcloud ai hp-tuning-jobs create "${SUBMIT_FLAGS[@]}"
  follow="gcloud ai hp-tuning-jobs list --project=$PROJECT --region=$REGION (then describe JOB_ID); each trial's workdir will be $WORKDIR/trial_ID"
fi
if is_dry_run; then
  note 'dry run: nothing was run'
else
  note "submitted: follow it with $follow"
fi
