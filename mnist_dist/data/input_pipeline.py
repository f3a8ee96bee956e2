"""MNIST in memory as uint8, and the distributed tf.data pipelines over it.

The order of training examples is a function of (seed, step) only: epoch e is
a stateless permutation seeded by (seed, e), the epochs are concatenated into
one stream, and global batch k is elements [k*B, (k+1)*B) of that stream. Each
input pipeline reads only its replicas' slice of every global batch. So the
global batch holds the same examples whatever the number of replicas, hosts or
restarts, which is what makes runs comparable across strategies and a resumed
run land where an uninterrupted one would.

Images stay uint8 until the steps scale them on the device, as the model's
input (`models.model_input`): four times less host memory and
host-to-device traffic than float32.

Augmentation (`augment`, off by default) keeps to the same rule.

No iterator here runs tf.data's autotuner (`distributed_iterator`): its
thread can make dropping an iterator, at the end of a run, wait up to a
minute.
"""

import dataclasses
import functools
import math
import sys

import numpy as np
import tensorflow as tf

from mnist_dist.base import paths
from mnist_dist.base import tf_internals
from mnist_dist.base.errors import ConfigError
from mnist_dist.base.errors import DataError
from mnist_dist.base.errors import TransientError
from mnist_dist.data import augment
from mnist_dist.data import downloads
from mnist_dist.data import idx

# Without the autotuner (`_without_autotune`), AUTOTUNE stands for tf.data's
# fixed defaults instead of tuned values: measured, the same speed
# (docs/performance.md, the end of a run).
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of MNIST: images uint8 [N, 28, 28], labels uint8 [N]."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)


_TO_IDX = 'to read the IDX files instead, pass --config.data.dir=FOLDER'


def _tfds_dataset(split: str, data_dir: str) -> tf.data.Dataset:
  """TFDS's mnist split, downloaded and prepared first if need be; offline,
  a DataError in seconds instead of TFDS's minutes of retries."""
  import tensorflow_datasets as tfds  # Only this source needs it.
  load = functools.partial(tfds.load, 'mnist', split=split,
                           as_supervised=True, data_dir=data_dir or None)
  try:
    return load(download=False)
  except AssertionError:  # Not prepared here yet.
    reason = downloads.why_no_download(
        tfds.builder('mnist', data_dir=data_dir or None))
    if reason:
      raise DataError(f'tfds mnist/{split}: cannot download it: {reason}; '
                      f'{_TO_IDX}') from None
    return load(download=True)


# What TFDS's loading raises for a defect in code, its own or ours: shown
# as it is. The rest (a wrong checksum, a folder that is a file, a full
# disk, the network) is about the data or the machine: one line.
_BUGS = (TypeError, AttributeError, NameError, KeyError, IndexError,
         ImportError, RecursionError, ZeroDivisionError)


def _is_transient(error: Exception) -> bool:
  """A download that may succeed if tried again: a connection reset or
  timed out, or a server error (5xx), as TFDS's `requests` reports them."""
  if paths.is_transient(error):
    return True
  requests = sys.modules.get('requests')
  if requests is None:
    return False
  if isinstance(error, requests.exceptions.HTTPError):
    return getattr(error.response, 'status_code', 0) >= 500
  return isinstance(error, (requests.exceptions.ConnectionError,
                            requests.exceptions.Timeout,
                            requests.exceptions.ChunkedEncodingError))


def _load_tfds(split: str, data_dir: str) -> Split:
  try:
    dataset = _tfds_dataset(split, data_dir)
    # batch_size=-1 in tfds.load aborts the process under tfds.testing.
    batches = list(dataset.batch(1 << 16).as_numpy_iterator())
  except DataError:
    raise
  except _BUGS:
    raise  # A traceback: ours or TFDS's to fix, not the user's input.
  except Exception as e:  # pylint: disable=broad-except
    # Its first line only: some (a wrong checksum) go on for several.
    message = str(e).strip().split('\n')[0]
    what = f'{type(e).__name__}: {message}'
    if _is_transient(e):
      raise TransientError(f'tfds mnist/{split}: the download failed for now '
                           f'({what}); run the same command again '
                           f'({_TO_IDX})') from e
    raise DataError(f'tfds mnist/{split}: cannot load ({what}); '
                    f'{_TO_IDX}') from e
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  return Split(images[..., 0], labels.astype(np.uint8))


def _synthetic(num_examples: int, seed: int) -> Split:
  rng = np.random.default_rng(seed)
  return Split(
      rng.integers(0, 256, (num_examples, 28, 28), dtype=np.uint8),
      rng.integers(0, idx.NUM_CLASSES, num_examples, dtype=np.uint8))


def load(data_config, *, seed: int) -> tuple[Split, Split]:
  """Returns the (train, test) splits of the configured source.

  source=auto reads the IDX files when data.dir is set and TFDS otherwise; a
  data.dir without the files is an error, not a silent switch to a download.
  """
  train, test = _load_source(data_config, seed=seed)
  if data_config.train_examples:
    train = Split(train.images[:data_config.train_examples],
                  train.labels[:data_config.train_examples])
  return train, test


def hold_out(train: Split, count: int) -> tuple[Split, Split]:
  """(the first len - count examples, the last count) of a training split."""
  if count >= len(train):
    raise ConfigError(f'data.validation_split={count} leaves no training '
                      f'examples of {len(train)}')
  return (Split(train.images[:-count], train.labels[:-count]),
          Split(train.images[-count:], train.labels[-count:]))


def splits(data_config, *, seed: int) -> dict[str, Split]:
  """{'train', 'eval', 'test': Split} of a run: it evaluates every epoch on
  'eval', the test set as in the codelab, or with data.validation_split the
  last training images held out (and 'test' once, at the end)."""
  train, test = load(data_config, seed=seed)
  evaluated = test
  if data_config.validation_split:
    train, evaluated = hold_out(train, data_config.validation_split)
  return {'train': train, 'eval': evaluated, 'test': test}


def _load_idx(data_config, *, seed: int) -> tuple[Split, Split]:
  del seed
  if not data_config.dir:
    raise DataError('data.source=idx needs --config.data.dir=FOLDER')
  return (Split(*idx.load_split(data_config.dir, 'train')),
          Split(*idx.load_split(data_config.dir, 'test')))


def _load_tfds_splits(data_config, *, seed: int) -> tuple[Split, Split]:
  del seed
  return (_load_tfds('train', data_config.tfds_dir),
          _load_tfds('test', data_config.tfds_dir))


def _load_synthetic(data_config, *, seed: int) -> tuple[Split, Split]:
  return (_synthetic(data_config.synthetic_train_examples, seed),
          _synthetic(data_config.synthetic_eval_examples, seed + 1))


# data.source -> its loader of the (train, test) splits. With 'auto'
# (`_load_source` picks one), config.DATA_SOURCES (tests/test_configs.py).
SOURCES = {'idx': _load_idx, 'tfds': _load_tfds_splits,
           'synthetic': _load_synthetic}
NAMES = ('auto', *SOURCES)


def _load_source(data_config, *, seed: int) -> tuple[Split, Split]:
  source = data_config.source
  if source == 'auto':
    source = 'idx' if data_config.dir else 'tfds'
  return SOURCES[source](data_config, seed=seed)


def _pipeline_slice(ctx: tf.distribute.InputContext, global_batch_size: int):
  """Returns (local replicas, per-replica batch, [lo, hi) of a global batch)."""
  per_replica = ctx.get_per_replica_batch_size(global_batch_size)
  local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
  lo = ctx.input_pipeline_id * local_replicas * per_replica
  return local_replicas, per_replica, (lo, lo + local_replicas * per_replica)


def train_dataset(ctx: tf.distribute.InputContext, split: Split, *,
                  global_batch_size: int, seed: int, start_step: int = 0,
                  augment_config=None) -> tf.data.Dataset:
  """One input pipeline's endless stream of (images, labels) batches.

  Yields per-replica batches of this pipeline's replicas, in replica order,
  starting at global step `start_step`. augment_config: data.augment of the
  config, or None for the images as they are.
  """
  num_examples = len(split)
  local_replicas, per_replica, (lo, hi) = _pipeline_slice(
      ctx, global_batch_size)
  first_epoch, skip = divmod(start_step * global_batch_size, num_examples)

  def epoch_order(epoch):
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_examples), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
    return order[tf.where(epoch == first_epoch, skip, 0):]

  def cut_into_batches(leftover, order):
    # The epochs laid end to end: a batch may straddle two of them.
    stream = tf.concat([leftover, order], axis=0)
    full = tf.size(stream) // global_batch_size * global_batch_size
    return stream[full:], tf.reshape(stream[:full], [-1, global_batch_size])

  def replica_slices(tensor):
    """[local_replicas, per_replica, ...]: this pipeline's rows of a batch."""
    return tf.reshape(tensor[lo:hi], [local_replicas, per_replica,
                                      *tensor.shape[1:]])

  def replica_batches(step, indices):
    if not augmenting:
      return replica_slices(indices)
    draws = augment.random_draws(augment_config, seed=seed, step=step,
                                 size=global_batch_size)
    return replica_slices(indices), tuple(map(replica_slices, draws))

  images = tf.constant(split.images)
  labels = tf.constant(split.labels, tf.int32)
  augmenting = augment.enabled(augment_config)

  def examples(indices, draws=None):
    batch = tf.gather(images, indices)
    if augmenting:
      batch = augment.apply(batch, draws, augment_config)
    return batch, tf.gather(labels, indices)

  # Whole index vectors from op to op, never one example at a time: per-example
  # tf.data elements cost ~20% of a dense model's step on 2 cores.
  batches = (tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max)
             .map(epoch_order)
             .scan(tf.zeros([0], tf.int32), cut_into_batches)
             .unbatch()
             .enumerate(start=start_step)
             .map(replica_batches)
             .unbatch())
  return _without_autotune(
      batches
      .map(examples, num_parallel_calls=AUTOTUNE, deterministic=True)
      .prefetch(AUTOTUNE))


def eval_steps(num_examples: int, global_batch_size: int) -> int:
  return math.ceil(num_examples / global_batch_size)


def eval_dataset(ctx: tf.distribute.InputContext, split: Split, *,
                 global_batch_size: int) -> tf.data.Dataset:
  """One input pipeline's (images, labels, weights) batches, repeated.

  The test set is padded to whole global batches with weight-0 examples, so
  every shape is static and each of the `eval_steps` steps sees every replica
  busy; one pass of `eval_steps` steps counts each real example exactly once.
  """
  local_replicas, per_replica, (lo, hi) = _pipeline_slice(
      ctx, global_batch_size)
  steps = eval_steps(len(split), global_batch_size)
  padded = np.arange(steps * global_batch_size).reshape(steps, -1)[:, lo:hi]
  weights = (padded < len(split)).astype(np.float32)
  indices = np.where(weights > 0, padded, 0)
  shape = [steps * local_replicas, per_replica]
  images = tf.constant(split.images)
  labels = tf.constant(split.labels, tf.int32)
  return _without_autotune(
      tf.data.Dataset.from_tensor_slices(
          (indices.reshape(shape), weights.reshape(shape)))
      .map(lambda i, w: (tf.gather(images, i), tf.gather(labels, i), w))
      .cache()
      .repeat()
      .prefetch(AUTOTUNE))


def _no_autotune() -> tf.data.Options:
  """Options without the autotuner, whose thread can hold up an iterator's
  drop.

  That thread sleeps between its rounds, twice as long after each one, up to
  60 s. Dropping an iterator cancels it, but TensorFlow (2.21 at least) wakes
  it before marking the cancellation done (tsl's `StartCancelWithStatus`
  runs the callbacks first), so it can miss it and sleep on while the
  iterator's destructor waits for it, holding the GIL: each iterator of the
  run's input waiting out its autotuner's sleep in turn kept a finished run
  alive, nothing running meanwhile (docs/performance.md, "The end of a run").
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return options


def _without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """dataset, its iterators without the autotuner's thread (`_no_autotune`)."""
  return dataset.with_options(_no_autotune())


def distributed_iterator(strategy: tf.distribute.Strategy, dataset_fn, *,
                         split: Split, **kwargs):
  """An iterator of strategy over dataset_fn(ctx, split=split, **kwargs), one
  pipeline a worker (`train_dataset`, `eval_dataset`).

  No tf.data iterator inside it runs the autotuner, so that dropping it, when
  the run is done, returns at once (`_without_autotune`).
  """
  # tf.distribute's iterators put each pipeline's batches on the devices
  # through datasets of their own, which `with_options` on ours does not
  # reach; their autotuners hold up the drop of the run's input as ours do.
  with tf_internals.device_datasets_with(_no_autotune()):
    return iter(strategy.distribute_datasets_from_function(
        functools.partial(dataset_fn, split=split, **kwargs)))
