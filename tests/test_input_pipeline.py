"""The input order and sharding that make runs comparable and resumable."""

import gc
import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from helpers import small_config
from mnist_dist.base import errors
from mnist_dist.base import tf_internals
from mnist_dist.data import input_pipeline


def _indexed_split(num_examples):
  """A split whose image i holds i in its first two pixels, to trace examples."""
  images = np.zeros((num_examples, 28, 28), np.uint8)
  images[:, 0, 0] = np.arange(num_examples) % 256
  images[:, 0, 1] = np.arange(num_examples) // 256
  return input_pipeline.Split(images, np.arange(num_examples) % 10)


def _ids(images):
  images = np.asarray(images).astype(np.int64)
  return images[:, 0, 0] + 256 * images[:, 0, 1]


def _global_batches(dataset_fn, *, pipelines, replicas, steps, **kwargs):
  """Assembles the first `steps` global batches from every pipeline's output."""
  per_pipeline = []
  for pipeline_id in range(pipelines):
    context = tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
        num_replicas_in_sync=replicas)
    dataset = dataset_fn(context, **kwargs)
    local = replicas // pipelines
    per_pipeline.append(list(dataset.take(steps * local).as_numpy_iterator()))
  batches = []
  for step in range(steps):
    parts = [p[step * (replicas // pipelines) + r] for p in per_pipeline
             for r in range(replicas // pipelines)]
    batches.append(tuple(np.concatenate(x) for x in zip(*parts)))
  return batches


@pytest.mark.parametrize('pipelines,replicas', [(1, 2), (1, 3), (2, 2), (3, 6)])
def test_global_batch_is_the_same_for_any_topology(pipelines, replicas):
  split = _indexed_split(100)
  kwargs = dict(split=split, global_batch_size=12, seed=7, steps=20)
  reference = _global_batches(input_pipeline.train_dataset, pipelines=1,
                              replicas=1, **kwargs)
  sharded = _global_batches(input_pipeline.train_dataset, pipelines=pipelines,
                            replicas=replicas, **kwargs)
  for (ref_images, ref_labels), (images, labels) in zip(reference, sharded):
    np.testing.assert_array_equal(ref_images, images)
    np.testing.assert_array_equal(ref_labels, labels)


_AUGMENT = ml_collections.ConfigDict(
    {'max_shift': 2.0, 'max_rotation': 10.0, 'max_scale': 0.1,
     'elastic_alpha': 30.0, 'elastic_sigma': 4.0})


def _digit_split(num_examples):
  """Random blobs away from the border, so that transforms keep them whole."""
  rng = np.random.default_rng(0)
  images = np.zeros((num_examples, 28, 28), np.uint8)
  images[:, 8:20, 8:20] = rng.integers(0, 256, (num_examples, 12, 12))
  return input_pipeline.Split(images, np.arange(num_examples) % 10)


@pytest.mark.parametrize('pipelines,replicas', [(1, 2), (2, 2), (3, 6)])
def test_augmentation_is_the_same_for_any_topology(pipelines, replicas):
  kwargs = dict(split=_digit_split(100), global_batch_size=12, seed=7, steps=10,
                augment_config=_AUGMENT)
  reference = _global_batches(input_pipeline.train_dataset, pipelines=1,
                              replicas=1, **kwargs)
  sharded = _global_batches(input_pipeline.train_dataset, pipelines=pipelines,
                            replicas=replicas, **kwargs)
  plain = _global_batches(input_pipeline.train_dataset, pipelines=1,
                          replicas=1, **{**kwargs, 'augment_config': None})
  for (ref_images, ref_labels), (images, labels), (original, plain_labels) in (
      zip(reference, sharded, plain, strict=True)):
    np.testing.assert_array_equal(ref_images, images)
    np.testing.assert_array_equal(ref_labels, labels)
    np.testing.assert_array_equal(plain_labels, labels)  # Labels untouched.
    # Every image moved, none lost its ink.
    assert np.all(np.any(images != original, axis=(1, 2)))
    ink = images.reshape(12, -1).sum(1) / original.reshape(12, -1).sum(1)
    assert np.all((ink > 0.4) & (ink < 2.5)), ink


def test_augmentation_is_seeded_and_resumes_with_the_stream():
  kwargs = dict(pipelines=1, replicas=1, split=_digit_split(100),
                global_batch_size=12, augment_config=_AUGMENT)
  first = _global_batches(input_pipeline.train_dataset, steps=12, seed=1,
                          **kwargs)
  again = _global_batches(input_pipeline.train_dataset, steps=12, seed=1,
                          **kwargs)
  resumed = _global_batches(input_pipeline.train_dataset, steps=3, seed=1,
                            start_step=9, **kwargs)
  other = _global_batches(input_pipeline.train_dataset, steps=12, seed=2,
                          **kwargs)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a[0], b[0])
  for a, b in zip(first[9:], resumed, strict=True):
    np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(first[0][0], other[0][0])


def test_each_epoch_is_a_seeded_permutation():
  split = _indexed_split(96)
  batches = _global_batches(input_pipeline.train_dataset, pipelines=1,
                            replicas=1, split=split, global_batch_size=32,
                            seed=3, steps=6)
  ids = np.concatenate([_ids(images) for images, _ in batches])
  first, second = ids[:96], ids[96:]
  assert sorted(first) == sorted(second) == list(range(96))
  assert list(first) != list(second) != list(range(96))
  other_seed = _global_batches(input_pipeline.train_dataset, pipelines=1,
                               replicas=1, split=split, global_batch_size=32,
                               seed=4, steps=3)
  assert list(np.concatenate([_ids(i) for i, _ in other_seed])) != list(first)


def test_start_step_continues_the_same_stream():
  # 100 examples, batch 12: batches straddle epoch boundaries.
  split = _indexed_split(100)
  kwargs = dict(pipelines=1, replicas=2, split=split, global_batch_size=12,
                seed=5)
  uninterrupted = _global_batches(input_pipeline.train_dataset, steps=30,
                                  **kwargs)
  resumed = _global_batches(input_pipeline.train_dataset, steps=13,
                            start_step=17, **kwargs)
  for expected, got in zip(uninterrupted[17:], resumed, strict=True):
    np.testing.assert_array_equal(_ids(expected[0]), _ids(got[0]))


@pytest.mark.parametrize('pipelines,replicas,batch', [
    (1, 1, 300), (1, 3, 300), (2, 4, 64), (1, 2, 10_000)])
def test_eval_covers_each_example_once(pipelines, replicas, batch):
  split = _indexed_split(1_001)
  steps = input_pipeline.eval_steps(len(split), batch)
  batches = _global_batches(input_pipeline.eval_dataset, pipelines=pipelines,
                            replicas=replicas, steps=steps, split=split,
                            global_batch_size=batch)
  ids = np.concatenate([_ids(images)[weights > 0]
                        for images, _, weights in batches])
  assert sorted(ids) == list(range(1_001))
  labels = np.concatenate([l[w > 0] for _, l, w in batches])
  np.testing.assert_array_equal(labels, split.labels[ids])


def test_tfds_source_with_mock_data():
  config = small_config({'data.source': 'tfds'})
  with tfds.testing.mock_data(num_examples=50):
    train, test = input_pipeline.load(config.data, seed=0)
  assert train.images.shape == (50, 28, 28) and train.images.dtype == np.uint8
  assert test.labels.shape == (50,) and test.labels.max() < 10


def test_auto_source_reads_idx_when_dir_is_set_else_tfds(mnist_dir):
  config = small_config({'data.source': 'auto', 'data.dir': mnist_dir})
  train, _ = input_pipeline.load(config.data, seed=0)
  assert len(train) == 60_000
  config.data.dir = ''
  with tfds.testing.mock_data(num_examples=7):
    train, _ = input_pipeline.load(config.data, seed=0)
  assert len(train) == 7


def test_auto_source_with_a_wrong_dir_fails_instead_of_downloading(tmp_path):
  config = small_config({'data.source': 'auto', 'data.dir': str(tmp_path)})
  with pytest.raises(errors.DataError, match='no such file'):
    input_pipeline.load(config.data, seed=0)


# The run's two datasets, with what each takes besides split and batch.
_DATASETS = {'train': (input_pipeline.train_dataset, {'seed': 0}),
             'eval': (input_pipeline.eval_dataset, {})}


def _distributed(strategy, which: str, split):
  dataset_fn, kwargs = _DATASETS[which]
  return input_pipeline.distributed_iterator(
      strategy, dataset_fn, split=split, global_batch_size=32, **kwargs)


@pytest.mark.parametrize('which', sorted(_DATASETS))
def test_no_iterator_of_the_input_runs_the_autotuner(which, monkeypatch):
  # Ours, and those tf.distribute adds to put batches on each device: each
  # autotuner can hold up the iterator's drop (`_without_autotune`). That
  # tf.distribute's get the options: tests/test_tf_internals.py.
  split = _indexed_split(256)
  dataset_fn, kwargs = _DATASETS[which]
  ours = dataset_fn(tf.distribute.InputContext(), split=split,
                    global_batch_size=32, **kwargs)
  assert ours.options().autotune.enabled is False
  given = []
  with_options = tf_internals.device_datasets_with

  def recorded(options):
    given.append(options)
    return with_options(options)

  monkeypatch.setattr(tf_internals, 'device_datasets_with', recorded)
  strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
  _distributed(strategy, which, split)
  assert [options.autotune.enabled for options in given] == [False]


@pytest.mark.slow  # 8 s of reading, for the autotuner's sleeps to grow.
def test_dropping_the_input_returns_at_once():
  """Dropping a run's input returns at once, however long it was read.

  With tf.data's autotuner, each iterator may wait out the rest of its
  autotuner's sleep as it is dropped: these 8, read for 8 s, took 12.7 s
  to drop (in 2 tries of 2), 0.2 s without it.
  """
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  split = _indexed_split(1024)
  iterators = [_distributed(strategy, which, split)
               for which in sorted(_DATASETS) for _ in range(4)]
  started = time.time()
  while time.time() - started < 8:
    for iterator in iterators:
      next(iterator)
    time.sleep(0.01)
  started = time.time()
  del iterators
  gc.collect()
  assert time.time() - started < 3
