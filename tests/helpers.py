"""Helpers the tests share: small configs, runs of the entry point, IDX files
and checkpoint contents. Fixtures are in conftest.py."""

import functools
import gzip
import importlib.util
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mnist_dist import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A cluster run's trainer flags (tests/test_cluster.py and
# test_launcher_orphans.py): 64 steps an epoch in loops of 4, so a signal
# after step 8 lands mid-epoch; outputs off.
CLUSTER_RUN = ('--config=configs/dense.py', '--config.data.source=synthetic',
               '--config.data.synthetic_train_examples=8192',
               '--config.data.synthetic_eval_examples=1000',
               '--config.train.epochs=2', '--config.train.steps_per_loop=4',
               '--config.checkpoint.every_steps=1000',
               '--config.outputs.tensorboard=False',
               '--config.outputs.saved_model=False',
               '--config.outputs.plots=False')
LAUNCHER = os.path.join(ROOT, 'launch', 'local_cluster.py')


def small_config(overrides=None):
  """A config on small synthetic data that trains in seconds.

  overrides: {dotted key: value}, e.g. small_config({'model.name': 'conv'}).
  """
  config = config_lib.default_config()
  config.data.source = 'synthetic'
  config.data.synthetic_train_examples = 1024
  config.data.synthetic_eval_examples = 1000
  config.train.epochs = 1
  config.train.global_batch_size = 64
  config.train.steps_per_loop = 8
  config.train.eval_batch_size = 300
  # Each costs seconds; the tests that are about them turn them on.
  config.outputs.tensorboard = False
  config.outputs.saved_model = False
  config.outputs.plots = False
  for key, value in (overrides or {}).items():
    *sections, name = key.split('.')
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  return config


def slow_after(count, cases):
  """parametrize cases: the first `count` in the quick suite, the others
  marked slow (for cases that each start a trainer process)."""
  return [case if i < count else pytest.param(*case, marks=pytest.mark.slow)
          for i, case in enumerate(cases)]


def run_main(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs `python -m mnist_dist.main ARGS` in a fresh process, as a user would.

  A process of its own: one process can hold only one split of the CPU into
  logical devices, and TF's collectives break when one process creates
  MirroredStrategies over different device sets.
  """
  return subprocess.run(
      [sys.executable, '-m', 'mnist_dist.main', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=timeout, check=False)


def start_main(*args: str, **popen_kwargs) -> subprocess.Popen:
  """Starts `python -m mnist_dist.main ARGS` in a fresh process, its stderr
  piped as text (for a test that signals, kills or reads it as it runs).

  popen_kwargs: more of Popen's, e.g. stdout=subprocess.DEVNULL.
  """
  return subprocess.Popen(
      [sys.executable, '-m', 'mnist_dist.main', *args], cwd=ROOT,
      stderr=subprocess.PIPE, text=True, **popen_kwargs)


def assert_refused(process, *, code: int = 2, says: str) -> str:
  """Asserts that a finished process was refused as the README promises:
  exit `code`, exactly one `error:` line on stderr, which says `says`, and
  no traceback. Returns that line.

  process: anything with returncode and stderr (a CompletedProcess).
  """
  stderr = process.stderr
  assert process.returncode == code, stderr[-2000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  errors = [line for line in stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, stderr[-3000:]
  assert says in errors[0], errors[0]
  return errors[0]


def _load_file(name: str, path: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(name: str):
  """get_config() of configs/NAME.py, loaded from its file as main does."""
  return _load_file(name, os.path.join(ROOT, 'configs', name + '.py')).get_config()


@functools.cache
def launch_script(name: str):
  """launch/NAME.py as a module, loaded once (it defines absl flags)."""
  return _load_file(name, os.path.join(ROOT, 'launch', name + '.py'))


def write_idx(path, array, magic, *, compress=False, cut=0):
  """Writes an IDX file of `array`, optionally gzipped or cut short."""
  data = struct.pack(f'>{1 + array.ndim}i', magic, *array.shape)
  data += array.astype(np.uint8).tobytes()
  data = data[:len(data) - cut]
  with open(path, 'wb') as f:
    f.write(gzip.compress(data) if compress else data)


def checkpoint_variables(workdir) -> dict:
  """{name: value} of the model variables in WORKDIR's latest checkpoint."""
  reader = tf.train.load_checkpoint(os.path.join(workdir, 'checkpoints'))
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if name.startswith('model/')}


# The fields of a metrics.jsonl record that measure time, not the run.
TIMING_KEYS = ('elapsed_s', 'wall_time', 'examples_per_s')


def finished_state(workdir) -> tuple[list[dict], dict]:
  """(the metrics.jsonl records without timings, the model variables) of
  WORKDIR: what two runs that trained the same must agree on."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  for record in records:
    for key in TIMING_KEYS:
      record.pop(key)
  return records, checkpoint_variables(workdir)


def assert_same_run(workdir, reference, *, epochs: int) -> None:
  """workdir ended where the uninterrupted run `reference` did: the same
  records of its epochs 1 to `epochs`, and the same weights."""
  records, weights = finished_state(workdir)
  reference_records, reference_weights = finished_state(reference)
  assert [r['epoch'] for r in records] == list(range(1, epochs + 1))
  assert weights.keys() == reference_weights.keys() and weights
  for name, value in reference_weights.items():
    np.testing.assert_allclose(weights[name], value, rtol=1e-4, atol=1e-6,
                               err_msg=name)
  for record, expected in zip(records, reference_records, strict=True):
    for key, value in expected.items():
      assert record[key] == pytest.approx(value, rel=1e-5), key
