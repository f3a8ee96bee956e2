"""TensorBoard event files hold the tags and steps a run wrote."""

import collections
import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import small_config
from mnist_dist.outputs import summaries


def _read_events(run_dir):
  """{tag: [(step, value)]} of every event file in run_dir."""
  events = collections.defaultdict(list)
  for path in glob.glob(os.path.join(run_dir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        events[value.tag].append((event.step, tf.make_ndarray(value.tensor)))
  return events


def test_train_and_eval_runs_hold_the_tags_and_steps(tmp_path):
  writer = summaries.Summaries(str(tmp_path))
  writer.write_config(small_config())
  for step in (100, 200):
    writer.write_train(step, {'loss': 1 / step, 'accuracy': 0.5,
                              'learning_rate': 0.01, 'examples_per_s': 6000.0})
  misclassified = np.random.default_rng(0).integers(0, 256, (3, 28, 28),
                                                    np.uint8)
  writer.write_eval(200, loss=0.25, accuracy=0.9,
                    misclassified_images=misclassified)
  writer.close()

  train = _read_events(tmp_path / 'tensorboard' / 'train')
  assert set(train) == {'config', 'loss', 'accuracy', 'learning_rate',
                        'examples_per_s'}
  assert [step for step, _ in train['loss']] == [100, 200]
  assert [float(v) for _, v in train['loss']] == pytest.approx([0.01, 0.005])
  assert [float(v) for _, v in train['examples_per_s']] == [6000.0, 6000.0]
  ((step, text),) = train['config']
  assert step == 0 and b'"global_batch_size": 64' in text.item()

  evaluation = _read_events(tmp_path / 'tensorboard' / 'eval')
  assert set(evaluation) == {'loss', 'accuracy', 'misclassified'}
  assert [(s, float(v)) for s, v in evaluation['accuracy']] == [
      (200, pytest.approx(0.9))]
  ((step, image),) = evaluation['misclassified']
  # An image summary is [width, height, PNG per image].
  assert step == 200 and image.shape == (5,)
  decoded = [tf.io.decode_png(png).numpy() for png in image[2:]]
  for digit, png in zip(misclassified, decoded, strict=True):
    np.testing.assert_array_equal(png[..., 0], digit)


def test_eval_without_images_writes_no_image_summary(tmp_path):
  writer = summaries.Summaries(str(tmp_path))
  writer.write_eval(10, loss=0.5, accuracy=0.8)
  writer.close()
  assert set(_read_events(tmp_path / 'tensorboard' / 'eval')) == {
      'loss', 'accuracy'}
