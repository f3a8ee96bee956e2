r"""The baseline: the codelab's own recipe, tf.data from the IDX files + model.fit.

  python -m benchmarks.codelab_fit --config=configs/conv_bn.py \
      --data_dir=../shared/mnist --epochs=2 --out=/tmp/fit.jsonl

As in the codelab's notebooks: FixedLengthRecordDataset over the IDX files,
decoded, cached, shuffled with a 5000 buffer, repeated, batched and
prefetched; Keras compile() with one-hot labels and categorical cross-entropy;
fit() for 60000 // batch steps an epoch with a LearningRateScheduler callback
giving lr0 * rate**epoch; the test set as validation data. The model is
mnist_dist's own (models.create_model) behind the trainer's scaling
(models.model_input), so that fit() too moves uint8 batches and scales them
in its compiled step, where the codelab scales each image on the host: both
sides train the same network from the same transfers, and what differs is
the input pipeline and the training loop. Writes one JSON line per epoch to
--out: epoch, wall_time (unix seconds at the epoch's end), train_s (the
epoch's training time, without validation), examples_per_s and, with
--validate, eval_accuracy.
"""

import json
import time

from absl import app
from absl import flags
import keras
from ml_collections import config_flags
import tensorflow as tf

from benchmarks import runner
from mnist_dist.data import idx
from mnist_dist.modeling import models
from mnist_dist.modeling import optimizers

config_flags.DEFINE_config_file('config', None, 'A config of configs/.')
_EPOCHS = flags.DEFINE_integer('epochs', 0,
                               "Epochs to train; 0: the config's train.epochs.")
_VALIDATE = flags.DEFINE_bool('validate', False,
                              'Evaluate on the test set after each epoch.')
_OUT = flags.DEFINE_string('out', None, 'Where the JSON lines go.')


def codelab_dataset(folder: str, split: str) -> tf.data.Dataset:
  """(uint8 image [28, 28], one-hot label) pairs, read as the codelab reads."""
  images_file, labels_file = (idx.find_file(folder, name)
                              for name in idx.FILES[split])
  compression = lambda path: 'GZIP' if path.endswith('.gz') else ''
  images = tf.data.FixedLengthRecordDataset(
      images_file, 28 * 28, header_bytes=16,
      compression_type=compression(images_file)).map(
          lambda raw: tf.reshape(tf.io.decode_raw(raw, tf.uint8), [28, 28]),
          num_parallel_calls=16)
  labels = tf.data.FixedLengthRecordDataset(
      labels_file, 1, header_bytes=8,
      compression_type=compression(labels_file)).map(
          lambda raw: tf.one_hot(tf.reshape(tf.io.decode_raw(raw, tf.uint8),
                                            []), 10),
          num_parallel_calls=16)
  return tf.data.Dataset.zip((images, labels))


class _EpochLog(keras.callbacks.Callback):
  """Times each epoch's training (validation excluded) and writes a line."""

  def __init__(self, path, *, examples_per_epoch):
    super().__init__()
    self._path = path
    self._examples = examples_per_epoch
    self._start = 0.0
    self._train_s = 0.0

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.time()

  def on_test_begin(self, logs=None):
    self._train_s = time.time() - self._start

  def on_epoch_end(self, epoch, logs=None):
    train_s = self._train_s or time.time() - self._start
    self._train_s = 0.0
    record = {'epoch': epoch + 1, 'wall_time': time.time(),
              'train_s': train_s,
              'examples_per_s': self._examples / train_s}
    if 'val_accuracy' in logs:
      record['eval_accuracy'] = float(logs['val_accuracy'])
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')


def main(argv):
  del argv
  config = flags.FLAGS.config
  keras.utils.set_random_seed(config.seed)
  batch = config.train.global_batch_size
  train = (codelab_dataset(runner.DATA_DIR.value, 'train').cache()
           .shuffle(5000, reshuffle_each_iteration=True).repeat()
           .batch(batch, drop_remainder=True).prefetch(-1))
  test = codelab_dataset(runner.DATA_DIR.value, 'test').cache().batch(10000)
  images = keras.Input((28, 28), dtype='uint8')
  model = keras.Model(images,
                      models.create_model(config.model)(
                          models.model_input(images)))
  optimizer = optimizers.OPTIMIZERS[config.optimizer.name]
  model.compile(optimizer=optimizer(config.optimizer.learning_rate),
                loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  steps_per_epoch = 60000 // batch
  lr0, rate = config.optimizer.learning_rate, config.optimizer.decay_rate
  model.fit(
      train, steps_per_epoch=steps_per_epoch,
      epochs=_EPOCHS.value or config.train.epochs,
      validation_data=test if _VALIDATE.value else None,
      validation_steps=1 if _VALIDATE.value else None, verbose=0,
      callbacks=[
          keras.callbacks.LearningRateScheduler(
              lambda epoch: lr0 * rate**epoch),
          _EpochLog(_OUT.value, examples_per_epoch=steps_per_epoch * batch)])


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'out'])
  app.run(main)
