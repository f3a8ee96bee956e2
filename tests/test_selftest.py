"""mnist-dist-selftest: every row passes on sound code and fails, by name,
when its property is broken in the code it runs.

Each break below is a plausible bug, patched into the project's code (or
Keras') for one test: the row must go from pass to fail. The slow variant
runs every row under each break: only the broken one may fail. Tiny sizes
keep the quick suite to a few seconds a row (tracing dominates).
"""

import json
import subprocess
import sys

import keras
from keras import layers
import pytest
import tensorflow as tf

from helpers import ROOT
from mnist_dist import steps
from mnist_dist.base import errors
from mnist_dist.data import input_pipeline
from mnist_dist.modeling import models
from mnist_dist.tools import matmul
from mnist_dist.tools import measures
from mnist_dist.tools import selftest

TINY = measures.Sizes(per_replica_batch=4, train_steps=2, speed_batch=8,
                      speed_steps=2, matmul_size=64, matmul_seconds=0.01)
CHECKS = {check.name: check for check in selftest.CHECKS}


@pytest.fixture(name='machine', scope='module')
def _machine():
  """Mirrored over 2 of the test process's logical CPUs (conftest.py)."""
  return selftest.find_machine(cpu_devices=2)


def _per_replica_mean_loss(monkeypatch):
  """Each replica divides its loss by its own batch, not the global one."""
  monkeypatch.setattr(tf.nn, 'compute_average_loss',
                      lambda losses, global_batch_size: tf.reduce_mean(losses))


def _order_by_replica_count(monkeypatch):
  """The input order depends on the replica count."""
  original = input_pipeline.train_dataset

  def train_dataset(ctx, *, seed, **kwargs):
    return original(ctx, seed=seed + ctx.num_replicas_in_sync, **kwargs)
  monkeypatch.setattr(input_pipeline, 'train_dataset', train_dataset)


def _unsynchronized_batch_norm(monkeypatch):
  """model.sync_batch_norm is ignored: each replica's own statistics."""
  monkeypatch.setattr(models, '_bn_relu', lambda config: [
      layers.BatchNormalization(center=True, scale=False, synchronized=False),
      layers.Activation('relu')])


def _eval_weights_dropped(monkeypatch):
  """The eval step counts padding: its weights are ignored."""
  original = steps.example_sums
  monkeypatch.setattr(steps, 'example_sums', lambda labels, logits, losses,
                      weights=None: original(labels, logits, losses))


def _xla_step_halved(monkeypatch):
  """The XLA-compiled step divides by twice the batch."""
  original = steps.make_train_step

  def make_train_step(*, jit_compile, global_batch_size, **kwargs):
    return original(jit_compile=jit_compile, global_batch_size=(
        global_batch_size * (2 if jit_compile else 1)), **kwargs)
  monkeypatch.setattr(steps, 'make_train_step', make_train_step)


def _uneven_loss_scale(monkeypatch):
  """An overflow halves the first replica's loss scale, quarters the rest."""
  def handle_non_finite_grads(optimizer):
    optimizer.step_counter.assign(0)
    for i, copy in enumerate(optimizer.dynamic_scale.value.values):
      copy.assign(copy * (0.5 if i == 0 else 0.25))
  monkeypatch.setattr(keras.optimizers.LossScaleOptimizer,
                      '_stateful_handle_non_finite_grads',
                      handle_non_finite_grads)


def _matmul_unmeasured(monkeypatch):
  """The matmul timing comes back as no number."""
  monkeypatch.setattr(matmul, 'matmul_gflops',
                      lambda dtype, **kwargs: float('nan'))


def _micro_batch_mean_loss(monkeypatch):
  """Each micro-batch's loss is divided by the micro-batch, not the global
  batch."""
  original = steps.make_train_step

  def make_train_step(*, global_batch_size, accumulation_steps=1, **kwargs):
    return original(global_batch_size=global_batch_size // accumulation_steps,
                    accumulation_steps=accumulation_steps, **kwargs)
  monkeypatch.setattr(steps, 'make_train_step', make_train_step)


# Row -> a break of its property. Every row has one (a new row needs one).
BREAKS = {
    'same_global_batches': _order_by_replica_count,
    'same_weights': _per_replica_mean_loss,
    'sync_batch_norm': _unsynchronized_batch_norm,
    'exact_eval': _eval_weights_dropped,
    'xla_step': _xla_step_halved,
    'loss_scale': _uneven_loss_scale,
    'accumulation': _micro_batch_mean_loss,
    'speed': _matmul_unmeasured,
}


# Breaks that break another row's property too, rightly: a loss divided by
# the replica's batch also divides each micro-batch's by the micro-batch.
ALSO_BROKEN = {'same_weights': ('accumulation',)}


def test_every_row_has_a_break():
  assert list(BREAKS) == list(CHECKS)


def _row(machine, name):
  (row,) = selftest.run_checks(machine, sizes=TINY, checks=(CHECKS[name],))
  return row


@pytest.mark.parametrize('name', list(BREAKS))
def test_a_broken_property_fails_its_row(machine, monkeypatch, name):
  sound = _row(machine, name)
  assert sound.status == 'pass', sound.detail
  BREAKS[name](monkeypatch)
  broken = _row(machine, name)
  assert broken.status == 'fail', broken.detail
  (line,) = [line for line in selftest.format_table([broken], machine)
             .splitlines() if line.startswith(name)]
  assert line.split()[1] == 'FAIL'
  assert broken.detail in line  # What it measured is on the failed row.


@pytest.mark.slow  # Every row under each break: ~30 s each.
@pytest.mark.parametrize('name', list(BREAKS))
def test_a_broken_property_fails_its_row_only(machine, monkeypatch, name):
  BREAKS[name](monkeypatch)
  rows = selftest.run_checks(machine, sizes=TINY)
  expected = [row for row in CHECKS if row == name or
              row in ALSO_BROKEN.get(name, ())]
  assert [row.name for row in rows if row.failed] == expected, (
      selftest.format_table(rows, machine))


def test_what_the_failed_rows_measure(machine, monkeypatch):
  """The figures a break moves, not just the verdict."""
  _per_replica_mean_loss(monkeypatch)
  # Twice the gradient on 2 replicas: the weights moved about twice as far,
  # a difference of the order of the move itself.
  assert _row(machine, 'same_weights').measured > 0.5
  _eval_weights_dropped(monkeypatch)
  row = _row(machine, 'exact_eval')
  # 4 eval batches of 8 and 1 example: the fifth batch's 7 pads counted.
  assert 'counted 40,' in row.detail, row.detail


def test_one_replica_skips_the_cross_replica_rows_and_says_so():
  machine = selftest.find_machine(cpu_devices=0)
  assert machine.replicas == 1
  cross_replica = tuple(c for c in selftest.CHECKS if c.multi_replica)
  rows = selftest.run_checks(machine, sizes=TINY, checks=cross_replica)
  assert {row.status for row in rows} == {'skipped (1 replica)'}
  assert not any(row.failed for row in rows)
  table = selftest.format_table(rows, machine)
  assert table.count('skipped (1 replica)') == len(cross_replica)
  assert table.splitlines()[-1] == (
      f'{len(rows)} rows: 0 passed, 0 failed, {len(rows)} skipped '
      f'({", ".join(c.name for c in cross_replica)}): skipped is not a '
      'failure, but it checked nothing')
  # The rows that need one replica run on one.
  assert _row(machine, 'exact_eval').status == 'pass'


def test_a_row_whose_code_raises_fails_naming_the_error(machine):
  def measure(machine, sizes):
    raise tf.errors.InvalidArgumentError(None, None, 'XLA cannot compile\nop X')
  row = selftest.run_check(selftest.Check('raising', 'a claim', measure),
                           machine, TINY)
  assert row.failed
  assert row.detail == 'raised InvalidArgumentError: XLA cannot compile'
  (line,) = selftest.format_table([row], machine).splitlines()[2:3]
  assert line.split()[:4] == ['raising', 'FAIL', '-', '-']


def test_a_failed_row_exits_1_after_writing_the_json(tmp_path, monkeypatch):
  failed = selftest.Row('same_weights', 'a claim', 'fail', 1.0, 1e-4,
                        'weights 1.0e+00 apart')
  monkeypatch.setattr(selftest, 'run_checks', lambda machine: [failed])
  out = tmp_path / 'new' / 'selftest.json'
  args = selftest._parse_flags(  # pylint: disable=protected-access
      ['selftest', '--cpu_devices=2', f'--out={out}'])
  assert selftest.run_command(args) == errors.EXIT_FAILED
  written = json.loads(out.read_text())
  assert written['passed'] is False
  assert written['rows'] == [{
      'name': 'same_weights', 'claim': 'a claim', 'status': 'fail',
      'measured': 1.0, 'tolerance': 1e-4, 'detail': 'weights 1.0e+00 apart',
      'figures': {}}]


def _selftest(*args, timeout=600):
  return subprocess.run([sys.executable, '-m', 'mnist_dist.selftest', *args],
                        cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, check=False)


def test_a_bad_flag_is_one_error_line_and_exit_2_without_a_traceback():
  process = _selftest('--cpu_devices=two', timeout=120)
  assert process.returncode == 2, process.stderr[-2000:]
  assert process.stderr.strip() == (
      "error: argument --cpu_devices: 'two' is not a count (0, 1, 2, ...)")
  assert process.stdout == ''


@pytest.mark.parametrize('args,message', [
    (['--cpu_devices=-1'], "error: argument --cpu_devices: '-1' is not a "
     'count'),
    (['extra'], 'error: unrecognized arguments: extra'),
    (['--output=x'], 'error: unrecognized arguments: --output=x'),
    (['--out=/'], 'error: --out=/ is a folder; give a file, e.g. '
     '/selftest.json'),
])
def test_bad_flags_are_one_error_line_and_exit_2(capsys, args, message):
  with pytest.raises(SystemExit) as exit_info:
    selftest.run_command(selftest._parse_flags(  # pylint: disable=protected-access
        ['selftest', *args]))
  assert exit_info.value.code == 2
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert line.startswith(message)


@pytest.mark.slow  # The whole command: ~50 s on 2 cores.
def test_the_command_passes_on_two_logical_cpus(tmp_path):
  out = tmp_path / 'workdir' / 'selftest.json'
  process = _selftest('--cpu_devices=2', f'--out={out}')
  assert process.returncode == 0, process.stdout + process.stderr[-3000:]
  assert 'Traceback' not in process.stderr
  report = json.loads(out.read_text())
  assert report['passed'] is True
  assert report['machine'] == {
      'strategy': 'MirroredStrategy', 'replicas': 2, 'device_kind': 'CPU',
      'precision': 'float32', 'jit_compile': False}
  assert [row['name'] for row in report['rows']] == list(CHECKS)
  assert {row['status'] for row in report['rows']} == {'pass'}
  speed = report['rows'][-1]['figures']
  assert speed['examples_per_s'] > 0 and speed['matmul_gflops'] > 0
  lines = process.stdout.splitlines()
  assert lines[0].startswith('mnist-dist-selftest: MirroredStrategy, 2 '
                             'replicas on CPU, float32, XLA off')
  assert lines[1].split()[:4] == ['row', 'result', 'measured', 'tolerance']
  for name, line in zip(CHECKS, lines[2:], strict=False):
    assert line.split()[:2] == [name, 'pass']
  assert lines[-1] == f'{len(CHECKS)} rows: {len(CHECKS)} passed, 0 failed'
