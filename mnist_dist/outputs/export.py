"""Exports a trained model as a SavedModel that serves digits; loads it back.

The SavedModel's one signature, `serving_default`, takes what MNIST is made
of, uint8 images [N, 28, 28] (input `images`), and returns what a caller
wants: `probabilities` (float32 [N, 10], the softmax of the logits) and
`classes` (int64 [N], the most likely digit). It holds the whole graph,
`models.model_input`'s scaling of the pixels included, so TensorFlow
Serving, `saved_model_cli` or plain `tf.saved_model.load` in a process that
never imports mnist_dist can run it. `SavedModel` is the action that writes
WORKDIR/export at the end of a run (`outputs.saved_model`).
"""

import tempfile
from typing import Callable

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from mnist_dist.base import workdir as workdir_lib
from mnist_dist.modeling import models
from mnist_dist.outputs import actions

SIGNATURE = 'serving_default'


def _float32_policies(config):
  """A Keras config with every mixed-precision dtype policy made float32."""
  if isinstance(config, list):
    return [_float32_policies(value) for value in config]
  if not isinstance(config, dict):
    return config
  if (config.get('class_name') == 'DTypePolicy' and
      config['config']['name'].startswith('mixed_')):
    return {**config, 'config': {**config['config'], 'name': 'float32'}}
  return {key: _float32_policies(value) for key, value in config.items()}


def _computing_in_float32(model: keras.Model) -> keras.Model:
  """model, or for one trained in mixed precision its float32 twin.

  LiteRT's converter has no bfloat16 kernels, and a CPU without bfloat16
  units runs float32 faster. Nothing is lost: mixed precision keeps the
  variables in float32, and the twin gets them as they are.
  """
  if not model.dtype_policy.name.startswith('mixed_'):
    return model
  twin = model.__class__.from_config(_float32_policies(model.get_config()))
  twin.set_weights(model.get_weights())
  return twin


def export_saved_model(model: keras.Model, export_dir: str) -> None:
  """Writes model, softmax and argmax included, as a SavedModel to export_dir.

  Args:
    model: a model of `models.create_model` (float32 images in [0, 1] in,
      logits out), trained under any strategy: only the variables' values
      are saved. In mixed precision, it is saved computing in float32. The
      export takes uint8 images and scales them as the steps do.
    export_dir: the SavedModel's folder (local or gs://).
  """
  model = _computing_in_float32(model)

  def serve(images):
    # uint8 in, scaled here as in training; dropout off, batch norm frozen;
    # float32 logits whatever the model computes in.
    logits = tf.cast(model(models.model_input(images), training=False),
                     tf.float32)
    return {'probabilities': tf.nn.softmax(logits),
            'classes': tf.argmax(logits, axis=-1)}

  archive = keras.export.ExportArchive()
  archive.track(model)
  # Naming the endpoint serving_default makes it the one signature.
  archive.add_endpoint(
      SIGNATURE, serve,
      input_signature=[tf.TensorSpec([None, 28, 28], tf.uint8, name='images')])
  # Saving sets absl's logger to the verbosity absl reports, which in a
  # process that never parsed absl's flags (tests, notebooks) turns its
  # inherited level into WARNING and silences every later logging.info.
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  try:
    archive.write_out(export_dir, verbose=False)
  finally:
    absl_logger.setLevel(level)


def load_predict_fn(
    export_dir: str, *, batch_size: int = 1000
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """Loads an export; returns predict(images) -> (probabilities, classes).

  The returned function takes uint8 images [N, 28, 28] as numpy and returns
  numpy arrays, float32 [N, 10] and int64 [N]. It feeds the images
  batch_size at a time, so a whole test set does not need the memory of one
  giant batch.
  """
  loaded = tf.saved_model.load(export_dir)

  def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Looked up here so that predict keeps `loaded`, which owns the variables.
    serve = loaded.signatures[SIGNATURE]
    outputs = [serve(images=tf.constant(images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
    return (np.concatenate([o['probabilities'].numpy() for o in outputs]),
            np.concatenate([o['classes'].numpy() for o in outputs]))

  return predict


class SavedModel(actions.Action):
  """WORKDIR/export, at the end of a run, if new or missing.

  Every worker exports, as with checkpoints (the model's functions are
  traced under the strategy, a collective); only the chief's is kept. The
  chief's goes to a temporary folder first, renamed into place when
  complete, so WORKDIR/export is never half-written.
  """

  every_worker = True

  def finish(self, context, *, trained):
    final = workdir_lib.path(context.workdir, workdir_lib.EXPORT)
    # Every worker decides alike: from the chief's workdir, which all read.
    if not trained and tf.io.gfile.exists(final):
      return
    if not context.chief:
      directory = tempfile.mkdtemp()
      export_saved_model(context.model, directory)
      tf.io.gfile.rmtree(directory)
      return
    staging = workdir_lib.temporary_name(final)
    export_saved_model(context.model, staging)
    if tf.io.gfile.exists(final):
      tf.io.gfile.rmtree(final)
    tf.io.gfile.rename(staging, final)
    logging.info('Exported the model to %s', final)
