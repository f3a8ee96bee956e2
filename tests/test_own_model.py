"""A model of the user's own: `--config.model.name=module:function`, defined
outside the package (here, in this test module), trained on 2 replicas,
stopped, resumed exactly, exported and served like a built-in one."""

import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from helpers import ROOT
from helpers import finished_state
from helpers import small_config
from mnist_dist import config as config_lib
from mnist_dist.base import errors
from mnist_dist.outputs import export
from mnist_dist.outputs import litert
from mnist_dist.modeling import models

THIS = 'test_own_model'


def small_convnet(model_config):
  """A uint8 [N, 28, 28] batch in, 10 logits out, as the built-in models."""
  return keras.Sequential([
      keras.Input((28, 28), dtype='uint8'),
      keras.layers.Rescaling(1 / 255),
      keras.layers.Reshape((28, 28, 1)),
      keras.layers.Conv2D(16, 5, strides=2, activation='relu'),
      keras.layers.Dropout(model_config.dropout),
      keras.layers.Flatten(),
      keras.layers.Dense(10, dtype='float32'),  # Logits.
  ])


def not_a_model(model_config):
  del model_config
  return 'a model'


def three_classes(model_config):
  del model_config
  return keras.Sequential([keras.Input((28, 28), dtype='uint8'),
                           keras.layers.Flatten(), keras.layers.Dense(3)])


def test_builds_like_a_built_in_model():
  config = small_config({'model.name': f'{THIS}:small_convnet'})
  config_lib.validate(config)
  model = models.create_model(config.model)
  assert model(np.zeros((4, 28, 28), np.uint8)).shape == (4, 10)


@pytest.mark.parametrize('name, says', [
    ('no_such_module:f', "model.name='no_such_module:f': cannot import it "
     "(No module named 'no_such_module')"),
    (f'{THIS}:no_such_function', 'cannot import it'),
    (f'{THIS}:THIS', 'is not a function'),
    (f'{THIS}:not_a_model', 'returned str, not a keras.Model'),
    (f'{THIS}:three_classes', 'maps 2 images to (2, 3), not (2, 10) logits')])
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
