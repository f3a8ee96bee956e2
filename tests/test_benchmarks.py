"""The benchmarks' own pieces: FLOPs counted from a model, the matmul rate,
the throughput table and its variants, MLPerf's rule; and the
time-to-accuracy benchmark end to end on the real MNIST."""

import importlib.util
import json
import subprocess
import sys
import types

from absl import app
import numpy as np
import pytest
import tensorflow as tf

from benchmarks import clocks
from benchmarks import flops
from benchmarks import mlperf
from benchmarks import throughput
from helpers import ROOT
from mnist_dist import config as config_lib
from mnist_dist.data import idx
from mnist_dist.tools import matmul


def _model_config(name):
  model_config = config_lib.default_config().model
  model_config.name = name
  return model_config


def test_flops_of_a_dense_model_are_its_matrix_products():
  # dense_softmax: Flatten, Dense(784 -> 10). The forward product is
  # 2 * 784 * 10 FLOPs an example and the weights' gradient as many; there
  # is no input gradient to compute. What is left is element-wise: the
  # 1/256 scaling of 784 pixels, the bias, the loss, at most a few per pixel.
  products = 2 * (2 * 784 * 10)
  for batch in (16, 64):  # Per example whatever the batch.
    counted = flops.train_flops_per_example(_model_config('dense_softmax'),
                                            batch_size=batch)
    assert products < counted < products + 3 * 784


def test_flops_of_conv_bn_are_three_times_its_forward_products():
  # Forward: each conv makes out_h * out_w * filters outputs of
  # kernel**2 * in_channels multiply-adds; then the two dense layers. The
  # backward pass costs twice the forward (one product for the inputs'
  # gradient, one for the weights'), the issue's 22.7 MFLOP.
  convs = [(28, 12, 3, 1), (14, 24, 6, 12), (7, 32, 6, 24)]
  forward = sum(2 * size * size * filters * kernel**2 * channels
                for size, filters, kernel, channels in convs)
  forward += 2 * (7 * 7 * 32 * 200 + 200 * 10)
  counted = flops.train_flops_per_example(_model_config('conv_bn'),
                                          batch_size=64)
  assert 3 * forward == pytest.approx(22.7e6, rel=0.002)
  # Batch norm, relu, dropout and the loss add ~1%.
  assert 3 * forward < counted < 1.02 * 3 * forward


def test_matmul_rate_is_the_products_flops_over_their_time(monkeypatch):
  # Real products, timed by a clock that they drive: each product the
  # compiled loop actually runs advances it by product_s. Whatever counts and
  # tries the function picks, the rate must then be one product's FLOPs
  # (2 * size**3) over product_s, in GFLOP/s: a miscount of FLOPs or
  # products, a timing around the wrong code, or a unit slip shows. (A real
  # clock could only bound it within orders of magnitude on a shared CPU.)
  size, product_s = 64, 1e-3
  products_run = tf.Variable(0, dtype=tf.int64)
  product = tf.matmul

  def counted_matmul(*args, **kwargs):
    products_run.assign_add(1)  # In the traced loop: once per product run.
    return product(*args, **kwargs)

  monkeypatch.setattr(tf, 'matmul', counted_matmul)
  monkeypatch.setattr(matmul, 'time', types.SimpleNamespace(
      perf_counter=lambda: int(products_run.numpy()) * product_s))
  rate = matmul.matmul_gflops('bfloat16', size=size, tries=2,
                              seconds=10 * product_s)
  assert int(products_run.numpy()) > 10  # It timed more than one product.
  assert rate == pytest.approx(2 * size**3 / product_s / 1e9, rel=1e-9)


def test_throughput_table_puts_speed_against_the_matmul_rates(capsys):
  row = {'round': 2, 'config': 'conv_bn', 'variant': 'bf16',
         'trainer_examples_per_s': 4000, 'vs_defaults': 1.1,
         'fit_examples_per_s': 3200, 'ratio': 1.25, 'mflop_per_example': 23.0,
         'gflop_per_s': 92.0, 'first_loop_s': 4.2}
  throughput.print_table([row], matmul_gflops={'float32': 200,
                                               'bfloat16': 400})
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith('| round | config | this trainer | examples/s |')
  assert 'of float32 matmul (200) | of bfloat16 matmul (400)' in lines[0]
  assert lines[2] == ('| 2 | conv_bn | bf16 | 4,000 | 1.1x | 3,200 | 1.25x '
                      '| 23.0 | 92.0 | 46% | 23% | 4.2 s |')


def test_a_variant_is_config_flags_and_environment_variables():
  assert throughput.parse_variant(
      'x=--config.train.precision=mixed_bfloat16,'
      'TF_XLA_FLAGS=--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit') == (
          throughput.Variant(
              'x', trainer_flags=('--config.train.precision=mixed_bfloat16',),
              env=(('TF_XLA_FLAGS',
                    '--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit'),)))
  for wrong in ('bf16', 'bf16=precision=mixed_bfloat16', '=--config.seed=1'):
    with pytest.raises(app.UsageError):
      throughput.parse_variant(wrong)


def test_mlperf_drops_the_fastest_and_slowest_of_five_runs():
  assert mlperf.summarize([9.0, 1.0, 5.0, 6.0, 7.0]) == {
      'mean_s': 6.0, 'spread_s': 2.0, 'kept': 3, 'median_s': 6.0}
  assert mlperf.summarize([4.0, 6.0]) == {'mean_s': 5.0, 'spread_s': 2.0,
                                          'kept': 2, 'median_s': 5.0}


def test_mlperf_fails_a_result_with_a_run_that_missed():
  result = mlperf.summarize([5.0, None, 6.0, 7.0, 8.0])
  assert result == {'failed': 1}
  assert mlperf.describe(result, runs=5) == (
      'failed: 1 of 5 runs missed the target')


@pytest.mark.slow
def test_fast_config_is_timed_from_launch_to_its_test_evaluation(
    tmp_path, mnist_dir):
  process = subprocess.run(
      [sys.executable, '-m', 'benchmarks.time_to_accuracy', '--config=fast',
       '--target=0.98', '--seeds=0', f'--data_dir={mnist_dir}',
       f'--out={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
      check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  with open(tmp_path / 'time_to_accuracy.json') as f:
    result = json.load(f)
  (run,) = result['trainer_runs']
  # Judged on the test set, evaluated once at the end of a run validated on
  # its own split; the clock starts at the launch and stops at that
  # evaluation, before the export and plots.
  assert run['accuracy'] >= 0.98
  assert 0 < run['startup_s'] < run['first_loop_s'] < run['reached_s']
  assert run['reached_s'] == run['last_eval_s'] < run['exit_s']
  assert result['results']['trainer']['launch']['kept'] == 1
  assert run['mlperf_s'] == pytest.approx(run['reached_s'] - run['startup_s'])
  assert '| trainer | 0 |' in process.stdout


def test_conv_pool_costs_a_third_of_conv_bn():
  # The GPU record recipe's net: valid 5x5 and 3x3 convs (24x24 and 10x10
  # outputs), each pooled by 2, then Dense 800 -> 256 -> 10. By the usual
  # count, three times the forward products: the issue's 7.5 MFLOP.
  conv_forward = 2 * (24 * 24 * 24 * 5 * 5 * 1 + 10 * 10 * 32 * 3 * 3 * 24)
  dense_forward = 2 * (800 * 256 + 256 * 10)
  assert 3 * (conv_forward + dense_forward) == pytest.approx(7.46e6,
                                                            rel=0.002)
  # TensorFlow's registered cost of each conv gradient counts the input's
  # positions (28x28 and 12x12: a valid conv's borders too), and the first
  # conv's input gradient is in the traced graph though nothing uses it.
  conv_gradient = 2 * (28 * 28 * 1 * 5 * 5 * 24 + 12 * 12 * 24 * 3 * 3 * 32)
  counted = flops.train_flops_per_example(_model_config('conv_pool'),
                                          batch_size=64)
  products = conv_forward + 2 * conv_gradient + 3 * dense_forward
  assert products == pytest.approx(9.18e6, rel=0.001)
  assert products < counted < 1.01 * products  # Pooling, biases, the loss.


def _record(*, wall_time, elapsed_s, epoch=1, **accuracies):
  return {'wall_time': wall_time, 'elapsed_s': elapsed_s, 'epoch': epoch,
          **accuracies}


def test_trainer_clocks_run_from_launch_and_from_the_first_data():
  # Launched at 100; the run was built (its data read) from 103; the
  # validation record stamped at 108, the test evaluation written at 109.
  records = [_record(wall_time=108.0, elapsed_s=5.0, eval_accuracy=0.991,
                     test_accuracy=0.992)]
  row = clocks.trainer_row(
      records, seed=7, launch=100.0, exit_s=15.0, loop_ends=[105.0],
      metrics_written=109.0, target=0.99)
  assert row == {'seed': 7, 'accuracy': 0.992, 'validation_accuracy': 0.991,
                 'startup_s': 3.0, 'first_loop_s': 5.0, 'last_eval_s': 9.0,
                 'exit_s': 15.0, 'reached_s': 9.0, 'mlperf_s': 6.0,
                 'epoch': 1}
  missed = clocks.trainer_row(
      records, seed=7, launch=100.0, exit_s=15.0, loop_ends=[],
      metrics_written=109.0, target=0.995)
  assert (missed['reached_s'], missed['mlperf_s'], missed['first_loop_s']) == (
      None, None, None)


def test_trainer_clocks_stop_at_the_first_epoch_at_the_target():
  # Without a validation split the test set is evaluated every epoch.
  records = [_record(wall_time=110.0, elapsed_s=8.0, eval_accuracy=0.98),
             _record(wall_time=115.0, elapsed_s=13.0, epoch=2,
                     eval_accuracy=0.991),
             _record(wall_time=120.0, elapsed_s=18.0, epoch=3,
                     eval_accuracy=0.993)]
  row = clocks.trainer_row(
      records, seed=0, launch=100.0, exit_s=30.0, loop_ends=[104.0],
      metrics_written=120.5, target=0.99)
  assert (row['reached_s'], row['mlperf_s'], row['epoch']) == (15.0, 13.0, 2)
  assert row['accuracy'] == 0.993


def test_the_peers_clocks_and_both_summaries():
  result = {'seed': 1, 'accuracy': 0.9902, 'examples_per_s': 12000.0,
            'imported': 103.0, 'data_start': 103.5, 'train_start': 104.0,
            'train_end': 108.0, 'eval_end': 108.5}
  row = clocks.peer_row(result, launch=100.0, exit_s=9.0,
                                  target=0.99)
  assert (row['startup_s'], row['reached_s'], row['mlperf_s']) == (
      3.0, 8.5, 5.0)
  assert clocks.peer_row(result, launch=100.0, exit_s=9.0,
                                   target=0.991)['reached_s'] is None
  runs = [{'reached_s': t, 'mlperf_s': t - 3} for t in (9, 5, 6, 7, 8)]
  assert clocks.summarize(runs) == {
      'launch': {'mean_s': 7.0, 'spread_s': 2.0, 'kept': 3, 'median_s': 7.0},
      'mlperf': {'mean_s': 4.0, 'spread_s': 2.0, 'kept': 3, 'median_s': 4.0}}
  # model.fit's runs have no MLPerf clock: only the one from launch.
  assert list(clocks.summarize(
      [{'reached_s': 5.0, 'mlperf_s': None}])) == ['launch']


# Run in a process of its own: PyTorch and TensorFlow in one process crash
# (a segmentation fault).
_RECORD_RECIPE_RUN = """
import json, sys
from benchmarks import record_recipe
images, labels = record_recipe.load_split(sys.argv[1], 'train')
model, optimizer, schedule = record_recipe.create(train_examples=len(labels),
                                                  seed=0)
record_recipe.train_epoch(model, optimizer, schedule,
                          *record_recipe.shuffled(images, labels, seed=0))

def step_past_the_end():
  try:
    schedule.step()
  except ValueError as e:
    return str(e)
  return ''

print(json.dumps({
    'shape': list(images.shape), 'first': images[:2, 0].tolist(),
    'labels': labels.tolist(), 'step_past_the_end': step_past_the_end(),
    'betas': optimizer.param_groups[0]['betas'],
    'accuracy': record_recipe.accuracy(
        model, *record_recipe.load_split(sys.argv[1], 'test'))}))
"""


@pytest.mark.skipif(importlib.util.find_spec('torch') is None,
                    reason='PyTorch (the benchmark extra) is not installed')
def test_the_record_recipe_reads_normalises_and_trains_one_cycle(
    learnable_dir):
  process = subprocess.run(
      [sys.executable, '-c', _RECORD_RECIPE_RUN, str(learnable_dir)],
      cwd=ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert process.returncode == 0, process.stderr[-3000:]
  result = json.loads(process.stdout)
  images, labels = idx.load_split(str(learnable_dir), 'train')
  # The project's reader's images, as the recipe normalises them.
  assert result['shape'] == [1024, 1, 28, 28]
  assert np.allclose(result['first'], (images[:2] / 255 - 0.1307) / 0.3081,
                     atol=1e-5)
  assert result['labels'] == labels.tolist()
  # 4 batches, the last of 256 too: OneCycleLR refuses a step past its
  # total.
  assert 'Tried to step' in result['step_past_the_end']
  assert result['betas'] == [0.7, 0.9]
  assert 0 <= result['accuracy'] <= 1


def test_ab_wins_only_in_every_round():
  from benchmarks import ab  # pylint: disable=g-import-not-at-top
  assert ab.verdict([1.2, 1.1, 1.3]).endswith('B faster in 3 of 3 rounds: '
                                              'B wins')
  assert ab.verdict([1.5, 0.99, 1.4]).endswith('2 of 3 rounds: no win')
  assert ab.verdict([0.5, 1.0, 2.0]).startswith(
      'B/A 0.50x to 2.00x (median 1.00x)')


def test_ab_times_both_loops_alternately_in_one_process():
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.ab', '--a=configs/dense.py',
       '--a.data.source=synthetic', '--b=configs/dense.py',
       '--b.data.source=synthetic', '--b.train.global_batch_size=32',
       '--rounds=2', '--steps=5'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines()
          if line.startswith(('| 1 ', '| 2 '))]
  assert len(rows) == 2, result.stdout
  assert 'of 2 rounds:' in result.stdout.splitlines()[-1]
