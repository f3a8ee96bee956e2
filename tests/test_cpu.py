"""What the commands do for the processor they run on: bfloat16 only where
it is native, oneDNN's kernels on every x86-64 Linux CPU, and TensorFlow's CPU
tensors kept between steps, not refaulted."""

import os
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT
from mnist_dist import config as config_lib
from mnist_dist.distribution import hardware
from mnist_dist.distribution import strategy as strategy_lib

_CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse2 avx2 {extra}
"""


@pytest.mark.parametrize('extra,features', [
    ('', []),
    ('avx512f avx512_bf16', ['avx512_bf16']),
    ('amx_tile amx_bf16', ['amx_bf16']),
])
def test_the_cpu_s_bfloat16_features_are_read_from_cpuinfo(
    tmp_path, monkeypatch, extra, features):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(_CPUINFO.format(extra=extra))
  real_open = open
  monkeypatch.setattr('builtins.open', lambda path, *args, **kwargs: real_open(
      cpuinfo if path == '/proc/cpuinfo' else path, *args, **kwargs))
  assert hardware.cpu() == ('Some CPU', features)
  assert hardware.native_bfloat16('CPU') == bool(features)


@pytest.mark.parametrize('kind,native,precision', [
    ('CPU', False, 'float32'),
    ('CPU', True, 'mixed_bfloat16'),
    ('GPU', False, 'float32'),
    ('GPU', True, 'mixed_bfloat16'),
    ('TPU', True, 'mixed_bfloat16'),
])
def test_bfloat16_if_native_resolves_by_the_device(monkeypatch, kind, native,
                                                   precision):
  asked = []
  monkeypatch.setattr(hardware, 'native_bfloat16',
                      lambda device_kind: asked.append(device_kind) or native)
  train = config_lib.default_config().train
  train.precision = 'mixed_bfloat16_if_native'
  settings = strategy_lib.device_settings(train, device_kind=kind,
                                          steps_per_epoch=100)
  assert settings.precision == precision and asked == [kind]


def test_a_tpu_is_native_and_a_gpu_needs_capability_8(monkeypatch):
  assert hardware.native_bfloat16('TPU')
  monkeypatch.setattr('tensorflow.config.list_physical_devices',
                      lambda kind: ['gpu0'])
  for capability, native in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
    monkeypatch.setattr('tensorflow.config.experimental.get_device_details',
                        lambda device, c=capability: {'compute_capability': c})
    assert hardware.native_bfloat16('GPU') == native


def _environment_without(variable: str) -> dict[str, str]:
  """This process's environment without variable, which importing a command
  here may have set: a fresh process then sees only what it sets itself."""
  return {name: value for name, value in os.environ.items()
          if name != variable}


_STEPS = textwrap.dedent("""
    import resource, sys
    from mnist_dist.base import console
    console.import_tensorflow([])  # As every command starts.
    import tensorflow as tf
    images = tf.random.normal([256, 28, 28, 24])
    kernel = tf.random.normal([5, 5, 24, 32])
    step = tf.function(lambda x: tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, 'SAME')))
    step(images).numpy()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
      step(images).numpy()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def test_steps_reuse_their_memory_instead_of_faulting_it_in_again():
  """20 steps of a conv of fast.py's size, in a process started as the
  commands start: measured, ~170 page faults (the BFC allocator) where
  TensorFlow's default allocator takes ~94,000 (a 19 MB output each step,
  returned to the kernel and faulted in again). On Eigen's kernels: where
  TensorFlow picks oneDNN's anyway, they keep their memory themselves."""
  env = _environment_without('TF_CPU_ALLOCATOR_USE_BFC')
  env['TF_ENABLE_ONEDNN_OPTS'] = '0'
  faults = subprocess.run([sys.executable, '-c', _STEPS], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
  assert int(faults.stdout.split()[-1]) < 10_000, faults.stdout


_ONEDNN = textwrap.dedent("""
    import os
    from mnist_dist.base import console
    console.import_tensorflow([])  # As every command starts.
    from tensorflow.python.util import _pywrap_util_port
    print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'),
          _pywrap_util_port.IsMklEnabled())
""")


@pytest.mark.skipif(sys.platform != 'linux' or os.uname().machine != 'x86_64',
                    reason='the commands ask for oneDNN on x86-64 Linux only')
@pytest.mark.parametrize('users_value,seen', [(None, ['1', 'True']),
                                              ('0', ['0', 'False'])])
def test_convolutions_run_on_onednn_unless_the_user_says_not(users_value,
                                                              seen):
  """TensorFlow turns oneDNN's kernels on by default only on CPUs with
  AVX512_VNNI or newer; on an AVX2-only CPU Eigen's took fast.py's step
  twice as long. The commands ask for oneDNN; the user's own value wins.
  (On a CPU with AVX512_VNNI oneDNN is on anyway: the variable tells.)"""
  env = _environment_without('TF_ENABLE_ONEDNN_OPTS')
  if users_value is not None:
    env['TF_ENABLE_ONEDNN_OPTS'] = users_value
  result = subprocess.run([sys.executable, '-c', _ONEDNN], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
  assert result.stdout.split()[-2:] == seen, result.stderr[-2000:]
