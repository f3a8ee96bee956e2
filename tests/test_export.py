"""The SavedModel serves the model's softmax and argmax to plain TensorFlow."""

import argparse
import json
import os
import shutil
import subprocess
import sys

from absl import logging as absl_logging
import keras
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from helpers import small_config
from mnist_dist import train
from mnist_dist.base import errors
from mnist_dist.distribution import strategy as strategy_lib
from mnist_dist.modeling import models
from mnist_dist.outputs import export
from mnist_dist.tools import predict

# Run by a fresh interpreter: TensorFlow alone, as a server or a user would.
_LOAD_AND_PREDICT = """
import json, sys
from absl import logging as absl_logging
import keras
import numpy as np
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
outputs = serve(images=tf.constant(np.load(sys.argv[2])))
np.savez(sys.argv[3], **{k: v.numpy() for k, v in outputs.items()})
(spec,) = serve.structured_input_signature[1].values()
print(json.dumps({
    'input': [spec.name, spec.dtype.name, spec.shape.as_list()],
    'outputs': {k: [v.dtype.name, v.shape.as_list()]
                for k, v in serve.structured_outputs.items()},
    'imported_mnist_dist': any(m.startswith('mnist_dist') for m in sys.modules),
}))
"""


def _trained_looking_model(cpu_devices):
  """conv_bn, built under the strategy a run of cpu_devices would use."""
  config = small_config({'distribution.cpu_devices': cpu_devices})
  with strategy_lib.create_strategy(config.distribution).scope():
    model = models.create_model(config.model)
  # Batch-norm statistics away from their initial 0 and 1, so that a serving
  # graph that used batch statistics or skipped them would answer differently.
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      shape = layer.moving_mean.shape
      layer.moving_mean.assign(rng.normal(size=shape))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=shape))
  return model


@pytest.mark.parametrize('cpu_devices', [0, 2])
@pytest.mark.slow  # Fresh processes that load TensorFlow: ~20 s each.
def test_plain_tensorflow_reproduces_the_model(tmp_path, cpu_devices):
  model = _trained_looking_model(cpu_devices)
  export_dir = str(tmp_path / 'export')
  export.export_saved_model(model, export_dir)
  images = np.random.default_rng(0).integers(0, 256, (7, 28, 28), np.uint8)
  np.save(tmp_path / 'images.npy', images)

  process = subprocess.run(
      [sys.executable, '-c', _LOAD_AND_PREDICT, export_dir,
       str(tmp_path / 'images.npy'), str(tmp_path / 'outputs.npz')],
      cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  described = json.loads(process.stdout.strip().splitlines()[-1])
  assert described == {
      'input': ['images', 'uint8', [None, 28, 28]],
      'outputs': {'probabilities': ['float32', [None, 10]],
                  'classes': ['int64', [None]]},
      'imported_mnist_dist': False,
  }
  served = np.load(tmp_path / 'outputs.npz')
  logits = model(models.model_input(images), training=False).numpy()
  np.testing.assert_allclose(served['probabilities'],
                             tf.nn.softmax(logits).numpy(), rtol=1e-5,
                             atol=1e-7)
  np.testing.assert_array_equal(served['classes'], np.argmax(logits, axis=-1))


def test_load_predict_fn_batches_and_returns_numpy(tmp_path):
  model = _trained_looking_model(0)
  export.export_saved_model(model, str(tmp_path))
  images = np.random.default_rng(1).integers(0, 256, (25, 28, 28), np.uint8)
  probabilities, classes = export.load_predict_fn(str(tmp_path),
                                                  batch_size=10)(images)
  assert probabilities.shape == (25, 10) and probabilities.dtype == np.float32
  assert classes.shape == (25,) and classes.dtype == np.int64
  np.testing.assert_allclose(
      probabilities,
      tf.nn.softmax(model(models.model_input(images), training=False)).numpy(),
      rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(classes, np.argmax(probabilities, axis=-1))


@pytest.mark.slow  # saved_model_cli loads TensorFlow in a process of its own.
def test_saved_model_cli_describes_the_signature(tmp_path):
  export.export_saved_model(_trained_looking_model(0), str(tmp_path))
  process = subprocess.run(
      [sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli', 'show',
       '--dir', str(tmp_path), '--tag_set', 'serve',
       '--signature_def', 'serving_default'],
      capture_output=True, text=True, timeout=120, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  shown = ' '.join(process.stdout.split())
  assert ("inputs['images'] tensor_info: dtype: DT_UINT8 shape: (-1, 28, 28)"
          in shown), process.stdout
  assert "outputs['classes'] tensor_info: dtype: DT_INT64 shape: (-1)" in shown
  assert ("outputs['probabilities'] tensor_info: dtype: DT_FLOAT "
          'shape: (-1, 10)' in shown)


def test_exporting_leaves_absl_logging_as_it_was(tmp_path):
  # TensorFlow's saving resets absl's logger level: in a process that did not
  # parse absl's flags, every later logging.info would be silenced.
  level = absl_logging.get_absl_logger().level
  export.export_saved_model(_trained_looking_model(0), str(tmp_path))
  assert absl_logging.get_absl_logger().level == level


def test_a_mixed_precision_model_is_exported_computing_in_float32(tmp_path):
  # LiteRT cannot convert bfloat16 ops; the variables are float32 already.
  config = small_config()
  config.model.name = 'conv_pool'
  keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    mixed = models.create_model(config.model)
  finally:
    keras.mixed_precision.set_global_policy('float32')
  plain = models.create_model(config.model)
  plain.set_weights(mixed.get_weights())
  export.export_saved_model(mixed, str(tmp_path))
  images = np.random.default_rng(2).integers(0, 256, (9, 28, 28), np.uint8)
  probabilities, _ = export.load_predict_fn(str(tmp_path))(images)
  np.testing.assert_allclose(
      probabilities,
      tf.nn.softmax(plain(models.model_input(images), training=False)).numpy(),
      rtol=1e-5, atol=1e-7)
  assert mixed.dtype_policy.name == 'mixed_bfloat16'  # The model unchanged.


def _predict_refusal(export_dir, tmp_path, capsys):
  """What predict says and exits with for export_dir and one digit."""
  image = tmp_path / 'digit.png'
  Image.fromarray(np.pad(np.full((10, 4), 255, np.uint8), 9)).save(image)
  with pytest.raises(SystemExit) as exit_info:
    predict.main(argparse.Namespace(model=export_dir, json=False,
                                    images=[str(image)]))
  return exit_info.value.code, capsys.readouterr().err


def test_an_export_cut_short_is_redone_and_refused_until_then(tmp_path,
                                                              capsys):
  config = small_config({'model.name': 'dense', 'outputs.saved_model': True})
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  final = os.path.join(workdir, 'export')
  marker = os.path.join(final, export.MARKER)
  with open(marker) as f:
    assert json.load(f)['files']['saved_model.pb'] > 0  # What it holds.
  # A complete export is kept by the next start.
  kept = os.stat(os.path.join(final, 'saved_model.pb')).st_ino
  train.train_and_evaluate(config, workdir)
  assert os.stat(os.path.join(final, 'saved_model.pb')).st_ino == kept

  # As a kill during a gs:// rename leaves it: some objects, no marker.
  os.remove(marker)
  shutil.rmtree(os.path.join(final, 'variables'))
  code, err = _predict_refusal(final, tmp_path, capsys)
  assert code == errors.EXIT_FAILED
  assert err == (f'error: --model={final}: export/ is incomplete (no '
                 f'{export.MARKER} in {final}): run the trainer again to redo '
                 'it\n')
  assert train.train_and_evaluate(config, workdir).metrics == []  # Untrained.
  assert os.path.exists(marker)
  export.load_predict_fn(final)  # Whole again.

  # Only the marker missing (a stop just before it): redone all the same.
  os.remove(marker)
  train.train_and_evaluate(config, workdir)
  assert os.path.exists(marker)
  assert os.stat(os.path.join(final, 'saved_model.pb')).st_ino != kept


def test_an_export_of_an_earlier_version_loads_if_whole(tmp_path, caplog):
  # Earlier versions wrote no marker; such an export that loads is used.
  export.export_saved_model(models.create_model(small_config().model),
                            str(tmp_path))
  with caplog.at_level('WARNING'):
    _, classes = export.load_predict_fn(str(tmp_path))(
        np.zeros((3, 28, 28), np.uint8))
  assert classes.shape == (3,)
  assert f'has no {export.MARKER}' in caplog.text
  export.check_complete(str(tmp_path))  # For LiteRT too.
  shutil.rmtree(tmp_path / 'variables')  # Not whole: no marker can vouch.
  with pytest.raises(errors.WorkdirError, match='export/ is incomplete'):
    export.check_complete(str(tmp_path))


def test_the_model_in_memory_predicts_as_its_export(tmp_path):
  # What the run's plots show (drawn from memory, not loaded back) is what
  # the export serves.
  trained = train.train_and_evaluate(
      small_config({'outputs.saved_model': True}), str(tmp_path))
  images = np.random.default_rng(0).integers(0, 256, (300, 28, 28), np.uint8)
  in_memory = export.predict_fn(trained.model, batch_size=128)(images)
  loaded = export.load_predict_fn(str(tmp_path / 'export'))(images)
  np.testing.assert_allclose(in_memory[0], loaded[0], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(in_memory[1], loaded[1])
