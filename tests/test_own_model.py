"""A model of the user's own: `--config.model.name=module:function`, defined
outside the package (here, in this test module), trained on 2 replicas,
stopped, resumed exactly, exported and served like a built-in one; given
float32 pixels in [0, 1], so that a plain Keras tutorial's model trains as
well as the built-in one of its size."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import finished_state
from helpers import ROOT
from helpers import small_config
from mnist_dist import config as config_lib
from mnist_dist import train
from mnist_dist.base import errors
from mnist_dist.modeling import models
from mnist_dist.outputs import export
from mnist_dist.outputs import litert

THIS = 'test_own_model'


def small_convnet(model_config):
  """Float32 [N, 28, 28] images in [0, 1] in, 10 logits out."""
  return keras.Sequential([
      keras.Input((28, 28)),
      keras.layers.Reshape((28, 28, 1)),
      keras.layers.Conv2D(16, 5, strides=2, activation='relu'),
      keras.layers.Dropout(model_config.dropout),
      keras.layers.Flatten(),
      keras.layers.Dense(10, dtype='float32'),  # Logits.
  ])


def plain_mlp(model_config):
  """A Keras tutorial's MNIST model, as a new user writes it: no input
  layer, no scaling."""
  del model_config
  return keras.Sequential([keras.layers.Flatten(),
                           keras.layers.Dense(64, activation='relu'),
                           keras.layers.Dense(10)])


def plain_dense(model_config):
  """The built-in `dense`'s layers, written the same plain way."""
  del model_config
  return keras.Sequential([keras.layers.Flatten(),
                           keras.layers.Dense(200, activation='relu'),
                           keras.layers.Dense(60, activation='relu'),
                           keras.layers.Dense(10)])


class _Recording(keras.Model):
  """Flatten and Dense(10), keeping what it is called on: the dtype of each
  trace, and the least and greatest pixel while training and evaluating."""

  def __init__(self):
    super().__init__()
    self.dtypes = set()
    self.dense = keras.layers.Dense(10)
    self.ranges = {
        split: self.add_weight(
            shape=(2,), initializer=keras.initializers.Constant([1e9, -1e9]),
            trainable=False, aggregation='only_first_replica',
            name=f'{split}_range')
        for split in ('train', 'eval')}

  def call(self, images, training=False):
    self.dtypes.add(keras.backend.standardize_dtype(images.dtype))
    seen = self.ranges['train' if training else 'eval']
    pixels = keras.ops.cast(images, 'float32')
    seen.assign(keras.ops.stack([
        keras.ops.minimum(seen[0], keras.ops.min(pixels)),
        keras.ops.maximum(seen[1], keras.ops.max(pixels))]))
    return self.dense(keras.ops.reshape(pixels, (-1, 28 * 28)))


def recording(model_config):
  del model_config
  return _Recording()


def not_a_model(model_config):
  del model_config
  return 'a model'


def three_classes(model_config):
  del model_config
  return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                           keras.layers.Dense(3)])


def flat_input(model_config):
  del model_config
  return keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])


def test_builds_like_a_built_in_model():
  config = small_config({'model.name': f'{THIS}:small_convnet'})
  config_lib.validate(config)
  model = models.create_model(config.model)
  assert model(models.model_input(np.zeros((4, 28, 28), np.uint8))).shape == (
      4, 10)


def test_the_model_trains_and_evaluates_on_float32_pixels_in_0_1(tmp_path):
  # The synthetic images hold every pixel value, 0 to 255: the model must
  # see 0 to 255/256, in float32, in training and in evaluation alike.
  config = small_config({'model.name': f'{THIS}:recording'})
  model = train.train_and_evaluate(config, str(tmp_path)).model
  assert model.dtypes == {'float32'}
  for split in ('train', 'eval'):
    np.testing.assert_array_equal(model.ranges[split].numpy(), [0, 255 / 256],
                                  err_msg=split)


@pytest.mark.parametrize('name, says', [
    ('no_such_module:f', "model.name='no_such_module:f': cannot import it "
     "(No module named 'no_such_module')"),
    (f'{THIS}:no_such_function', 'cannot import it'),
    (f'{THIS}:THIS', 'is not a function'),
    (f'{THIS}:not_a_model', 'returned str, not a keras.Model'),
    (f'{THIS}:three_classes', 'maps 2 images to (2, 3), not (2, 10) logits'),
    (f'{THIS}:flat_input',
     'cannot take float32 images [N, 28, 28] in [0, 1]: ')])
def test_what_breaks_the_contract_is_one_line(name, says):
  config = small_config({'model.name': name})
  with pytest.raises(errors.ConfigError) as error:
    config_lib.validate(config)
    models.create_model(config.model)
  assert says in str(error.value) and '\n' not in str(error.value)


_RUN = (f'--config.model.name={THIS}:small_convnet',
        '--config.data.source=synthetic',
        '--config.data.synthetic_train_examples=2048',
        '--config.data.synthetic_eval_examples=1000',
        '--config.distribution.cpu_devices=2', '--config.train.epochs=2',
        '--config.train.steps_per_loop=4', '--config.optimizer.name=sgd',
        '--config.outputs.plots=False', '--config.outputs.tensorboard=False')


def _start(workdir):
  return subprocess.Popen(
      [sys.executable, '-m', 'mnist_dist.main', f'--workdir={workdir}', *_RUN],
      cwd=ROOT, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'PYTHONPATH': os.path.dirname(__file__)})


@pytest.mark.slow  # Three trainer processes.
def test_trains_on_two_replicas_stops_and_resumes_exactly(tmp_path):
  straight = _start(tmp_path / 'straight')
  log = straight.communicate(timeout=300)[1]
  assert straight.returncode == 0, log[-2000:]

  stopped = _start(tmp_path / 'stopped')
  for line in stopped.stderr:  # Mid-epoch 2 (32 steps an epoch).
    if 'step 44/' in line:
      break
  stopped.send_signal(signal.SIGTERM)
  log = stopped.communicate(timeout=120)[1]
  assert stopped.returncode == errors.EXIT_INTERRUPTED, log[-2000:]
  resumed = _start(tmp_path / 'stopped')
  log = resumed.communicate(timeout=300)[1]
  assert resumed.returncode == 0, log[-2000:]
  assert 'Resuming from' in log

  straight_records, straight_weights = finished_state(tmp_path / 'straight')
  records, weights = finished_state(tmp_path / 'stopped')
  assert weights and weights.keys() == straight_weights.keys()
  for name, value in straight_weights.items():
    np.testing.assert_array_equal(value, weights[name], err_msg=name)
  assert [r['epoch'] for r in records] == [1, 2]

  # The export holds the whole graph: served without this module.
  workdir = str(tmp_path / 'stopped')
  _, classes = export.load_predict_fn(os.path.join(workdir, 'export'))(
      np.zeros((3, 28, 28), np.uint8))
  assert classes.shape == (3,)
  written = litert.write_tflite(workdir)
  assert written.agreement == 1.0


def _test_accuracy(workdir, mnist_dir, *flags: str) -> float:
  """The test accuracy of configs/dense.py (Adam, batch 128) trained 1 epoch
  on 2 logical CPUs of the real MNIST, in a fresh process."""
  process = subprocess.run(
      [sys.executable, '-m', 'mnist_dist.main', '--config=configs/dense.py',
       f'--workdir={workdir}', f'--config.data.dir={mnist_dir}',
       '--config.train.epochs=1', '--config.distribution.cpu_devices=2',
       '--config.outputs.saved_model=False', '--config.outputs.plots=False',
       '--config.outputs.tensorboard=False', *flags],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, 'PYTHONPATH': os.path.dirname(__file__)})
  assert process.returncode == 0, process.stderr[-2000:]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return json.loads(f.readlines()[-1])['eval_accuracy']


@pytest.mark.slow  # Three trainer processes on the real MNIST: ~20 s.
def test_plain_keras_models_train_as_well_as_the_built_in_ones(tmp_path,
                                                              mnist_dir):
  # Handed raw pixels, 0 to 255, as before models.model_input, both fell
  # far short of these bounds (docs/design.md#a-model-of-your-own).
  built_in = _test_accuracy(tmp_path / 'dense', mnist_dir)
  plain = _test_accuracy(tmp_path / 'plain_dense', mnist_dir,
                         f'--config.model.name={THIS}:plain_dense')
  assert built_in > 0.95
  assert plain == pytest.approx(built_in, abs=0.005)
  # A third of the width: about what model.fit makes of it in an epoch.
  assert _test_accuracy(tmp_path / 'plain_mlp', mnist_dir,
                        f'--config.model.name={THIS}:plain_mlp') > 0.92
