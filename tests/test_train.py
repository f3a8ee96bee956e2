"""End-to-end training and the distributed math, on 1, 2 and 3 CPU replicas."""

import json
import os

import ml_collections
import numpy as np
import pytest

from helpers import run_main
from helpers import small_config
from mnist_dist import train


def _run(tmp_path, overrides):
  return train.train_and_evaluate(small_config(overrides), str(tmp_path))


def _weights(result):
  return [np.asarray(w) for w in result.model.get_weights()]


@pytest.mark.parametrize('cpu_devices', [0, 2])
def test_trains_and_writes_metrics(tmp_path, cpu_devices):
  result = _run(tmp_path, {'distribution.cpu_devices': cpu_devices,
                           'train.epochs': 2})
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert records == result.metrics
  assert [r['epoch'] for r in records] == [1, 2]
  assert [r['step'] for r in records] == [16, 32]
  for record in records:
    assert record['eval_examples'] == 1000
    assert np.isfinite(record['train_loss']) and np.isfinite(record['eval_loss'])
    assert 0 <= record['eval_accuracy'] <= 1
    assert record['examples_per_s'] > 0


def _assert_same_run(one, two):
  for w1, w2 in zip(_weights(one), _weights(two), strict=True):
    np.testing.assert_allclose(w1, w2, rtol=1e-4, atol=1e-5)
  for key in ('train_loss', 'train_accuracy', 'eval_loss', 'eval_accuracy'):
    assert one.metrics[-1][key] == pytest.approx(two.metrics[-1][key],
                                                 rel=1e-4, abs=1e-6), key


# SGD, not Adam: Adam's update is blind to the gradient's scale, so it would
# hide a loss divided by the per-replica batch instead of the global one.
_SGD = {'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.05}


# The extras: augmentation, label smoothing and the weight average must not
# depend on the replica count either (the result's weights are then the
# averages). 4 steps, not 16: on random images a ReLU input within float
# rounding of 0 now and then flips between the two runs, and SGD at this rate
# amplifies that to ~1e-3 over 16 steps (seen with label smoothing on).
@pytest.mark.parametrize('extras', [{}, {
    'data.augment.max_shift': 2.0, 'data.augment.max_rotation': 10.0,
    'data.augment.max_scale': 0.1, 'train.ema_decay': 0.9,
    'train.label_smoothing': 0.1, 'data.synthetic_train_examples': 256,
    'train.steps_per_loop': 4}])
def test_one_and_two_replicas_reach_the_same_weights(tmp_path, extras):
  overrides = {'model.name': 'conv', **_SGD, **extras}
  one = _run(tmp_path / '1', overrides)
  two = _run(tmp_path / '2', {**overrides, 'distribution.cpu_devices': 2})
  _assert_same_run(one, two)


def _real_conv_bn(mnist_dir, sync_batch_norm):
  # Real digits and small steps: the gradient through batch norm is so badly
  # conditioned that float32 summation order alone (one sum of 64 vs two of
  # 32) moves it by ~1e-3 on real digits and ~1e-2 on random noise, and large
  # steps compound that. 8 steps at lr 0.001 separate sync (~2e-4 apart) from
  # per-replica statistics (~2e-1 apart) by three orders of magnitude.
  return {'model.name': 'conv_bn', 'model.dropout': 0.0,
          'model.sync_batch_norm': sync_batch_norm, 'data.source': 'idx',
          'data.dir': mnist_dir, 'data.train_examples': 512,
          'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.001}


def _relative_differences(one, two):
  return [np.max(np.abs(w1 - w2) / (np.abs(w1) + 1e-3))
          for w1, w2 in zip(_weights(one), _weights(two), strict=True)]


def test_synchronized_batch_norm_is_replica_agnostic(tmp_path, mnist_dir):
  overrides = _real_conv_bn(mnist_dir, sync_batch_norm=True)
  one = _run(tmp_path / '1', overrides)
  two = _run(tmp_path / '2', {**overrides, 'distribution.cpu_devices': 2})
  assert max(_relative_differences(one, two)) < 2e-3


def test_unsynchronized_batch_norm_differs_across_replicas(tmp_path,
                                                           mnist_dir):
  # The counterpart of the test above: per-replica statistics must change the
  # result, or that test would pass whatever sync_batch_norm did.
  overrides = _real_conv_bn(mnist_dir, sync_batch_norm=False)
  one = _run(tmp_path / '1', overrides)
  two = _run(tmp_path / '2', {**overrides, 'distribution.cpu_devices': 2})
  assert max(_relative_differences(one, two)) > 2e-2


_EVAL_10K = {'data.synthetic_eval_examples': 10_000,
             'train.global_batch_size': 96}  # 96 and 300 divide by 1, 2, 3.


@pytest.mark.parametrize('cpu_devices', [0, 2])
def test_eval_counts_every_test_example_once(tmp_path, cpu_devices):
  # 10,000 examples, eval batch 300 (not a divisor): padded and masked.
  result = _run(tmp_path, {**_EVAL_10K, 'distribution.cpu_devices': cpu_devices})
  assert result.metrics[-1]['eval_examples'] == 10_000


def test_eval_counts_every_test_example_once_on_three_replicas(tmp_path):
  config = small_config({**_EVAL_10K, 'distribution.cpu_devices': 3})
  process = run_main(f'--workdir={tmp_path}', *(
      f'--config.{section}.{key}={config[section][key]}'
      for section in ('data', 'train', 'distribution')
      for key in config[section]
      # Flags carry values, not sections (data.augment); '' is the default.
      if not isinstance(config[section][key], ml_collections.ConfigDict)
      and config[section][key] != ''))
  assert process.returncode == 0, process.stderr[-3000:]
  assert 'with 3 replicas' in process.stderr
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    assert json.loads(f.readline())['eval_examples'] == 10_000


def test_same_seed_same_run(tmp_path):
  overrides = {'model.name': 'dense_dropout'}
  first = _run(tmp_path / 'a', overrides)
  second = _run(tmp_path / 'b', overrides)
  for w1, w2 in zip(_weights(first), _weights(second), strict=True):
    np.testing.assert_array_equal(w1, w2)
  other = _run(tmp_path / 'c', {**overrides, 'seed': 1})
  assert not np.array_equal(_weights(first)[0], _weights(other)[0])


def test_validation_split_keeps_the_test_set_for_the_end(tmp_path):
  result = _run(tmp_path, {'data.validation_split': 200, 'train.epochs': 2})
  first, last = result.metrics
  assert first['eval_examples'] == last['eval_examples'] == 200
  assert first['step'] == (1024 - 200) // 64
  assert 'test_accuracy' not in first
  assert last['test_examples'] == 1000 and 0 <= last['test_accuracy'] <= 1


def test_stop_at_accuracy_ends_the_run_and_stays_ended(tmp_path):
  overrides = {'train.stop_at_accuracy': 0.01, 'train.epochs': 3,
               'data.validation_split': 100}
  (record,) = _run(tmp_path, overrides).metrics
  assert record['epoch'] == 1 and 'test_accuracy' in record
  assert _run(tmp_path, overrides).metrics == []
