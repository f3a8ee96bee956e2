#!/usr/bin/env bash
# launch/tpu_vm_remote.sh: the part of launch/tpu_vm.sh that runs ON the Cloud
# TPU VM, over `gcloud compute tpus tpu-vm ssh`, from the copied repo. Not for
# local use; costs nothing by itself.
#
#   TF_TPU_PIP="tensorflow-tpu==2.19.1" bash launch/tpu_vm_remote.sh install
#   [TPU_POD=1] bash launch/tpu_vm_remote.sh selftest SELFTEST ARGS...
#   [TPU_POD=1] bash launch/tpu_vm_remote.sh train TRAINER ARGS...
#
# install: pip-installs the TPU build of TensorFlow (TF_TPU_PIP, word-split into
#   pip arguments; empty keeps the runtime image's TensorFlow), then the
#   project without its dependencies, then its dependencies except
#   `tensorflow`: `pip install -e .` alone would pull the PyPI tensorflow over
#   the TPU build, which pip does not count as `tensorflow` (its distribution
#   is tensorflow-tpu).
# selftest: runs `python3 -m mnist_dist.selftest ARGS` (the distributed math
#   on this TPU; exit 1 on a failed row), in the environment train has.
# train: runs `python3 -m mnist_dist.main ARGS`. TPU_POD=1 (worker 0 of a pod
#   slice) sets TPU_LOAD_LIBRARY=0: that process drives every host's TPU
#   runtime and must not take the local chips itself. On one host, when
#   TF_PLUGGABLE_DEVICE_LIBRARY_PATH is unset and a libtpu.so is found (pip's
#   libtpu package, else /lib/libtpu.so), it sets it and
#   NEXT_PLUGGABLE_DEVICE_USE_C_API=true, TensorFlow's PJRT switch: what
#   Google's TF-on-TPU CI (GoogleCloudPlatform/ml-auto-solutions) sets.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}

requirements_without_tensorflow() {
  "$PYTHON" - <<'EOF'
import configparser, re, sys
config = configparser.ConfigParser()
config.read('setup.cfg')
lines = config.get('options', 'install_requires', fallback='').split('\n')
requirements = [line.strip() for line in lines if line.strip()]
if not requirements:
  sys.exit('tpu_vm_remote.sh: no install_requires in setup.cfg')
for requirement in requirements:
  name = re.match(r'[A-Za-z0-9._-]+', requirement).group(0)
  if re.sub(r'[-_.]+', '-', name).lower() != 'tensorflow':
    print(requirement)
EOF
}

libtpu_path() {
  "$PYTHON" - <<'EOF' 2>/dev/null || true
import importlib.util, os
spec = importlib.util.find_spec('libtpu')
if spec and spec.origin:
  path = os.path.join(os.path.dirname(spec.origin), 'libtpu.so')
  if os.path.exists(path):
    print(path)
EOF
}

# The TPU runtime's environment, for selftest and train.
tpu_environment() {
  if [[ ${TPU_POD:-0} == 1 ]]; then
    export TPU_LOAD_LIBRARY=0
  elif [[ -z ${TF_PLUGGABLE_DEVICE_LIBRARY_PATH:-} ]]; then
    local library
    library=$(libtpu_path)
    if [[ -z $library && -f /lib/libtpu.so ]]; then
      library=/lib/libtpu.so
    fi
    if [[ -n $library ]]; then
      export NEXT_PLUGGABLE_DEVICE_USE_C_API=true
      export TF_PLUGGABLE_DEVICE_LIBRARY_PATH=$library
    fi
  fi
}

case "${1:-}" in
  install)
    if [[ -n ${TF_TPU_PIP:-} ]]; then
      # shellcheck disable=SC2086  # TF_TPU_PIP is a list of pip arguments.
      "$PYTHON" -m pip install $TF_TPU_PIP
    fi
    "$PYTHON" -m pip install --no-deps -e .
    mapfile -t requirements < <(requirements_without_tensorflow)
    ((${#requirements[@]})) || exit 1
    "$PYTHON" -m pip install "${requirements[@]}"
    "$PYTHON" -c 'import tensorflow as tf, keras; print("TensorFlow", tf.__version__, "Keras", keras.__version__)'
    ;;
  selftest)
    shift
    tpu_environment
    exec "$PYTHON" -m mnist_dist.selftest "$@"
    ;;
  train)
    shift
    tpu_environment
    exec "$PYTHON" -m mnist_dist.main "$@"
    ;;
  *)
    echo 'usage: bash launch/tpu_vm_remote.sh install|selftest|train [ARGS...]' >&2
    exit 2
    ;;
esac
