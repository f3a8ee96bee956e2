"""Exports a trained model as a SavedModel that serves digits; loads it back.

The SavedModel's one signature, `serving_default`, takes what MNIST is made
of, uint8 images [N, 28, 28] (input `images`), and returns what a caller
wants: `probabilities` (float32 [N, 10], the softmax of the logits) and
`classes` (int64 [N], the most likely digit). It holds the whole graph,
`models.model_input`'s scaling of the pixels included, so TensorFlow
Serving, `saved_model_cli` or plain `tf.saved_model.load` in a process that
never imports mnist_dist can run it. `SavedModel` is the action that writes
WORKDIR/export at the end of a run (`outputs.saved_model`).

An export is whole when its marker, export/COMPLETE.json, is there: the
trainer writes it last. Locally the whole folder then appears at once (a
rename); on gs:// a rename copies object by object, and a stop meanwhile
leaves a folder without the marker, which the next start redoes and the
readers (`load_predict_fn`, LiteRT, the plots) refuse as incomplete unless
it loads whole, as an export of an earlier version does (`check_complete`).
"""

import datetime
import json
import os
import tempfile
from typing import Callable
import weakref

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from mnist_dist.base import errors
from mnist_dist.base import paths
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.modeling import models
from mnist_dist.outputs import actions

SIGNATURE = 'serving_default'
# Written into the export's folder once everything else is there.
MARKER = 'COMPLETE.json'


def is_complete(export_dir: str) -> bool:
  """True if export_dir holds a whole export (its marker is there)."""
  return tf.io.gfile.exists(os.path.join(export_dir, MARKER))


def _incomplete(export_dir: str) -> errors.WorkdirError:
  return errors.WorkdirError(
      f'export/ is incomplete (no {MARKER} in {export_dir}): run the trainer '
      'again to redo it')


def check_complete(export_dir: str) -> None:
  """Raises unless export_dir is a whole export, for the readers.

  Whole: its marker is there; or, for an export of an earlier version,
  which wrote none, it loads with its signature (a warning says so).
  TensorFlow's loader reads the graph and every variable, so one that loads
  answers as the whole would; a copy cut short lacks the variables, which
  come last.

  Raises:
    FileNotFoundError: there is no export at all.
    errors.WorkdirError: it is incomplete.
  """
  _load(export_dir)


def _load(export_dir: str):
  """export_dir loaded, if whole (`check_complete`)."""
  complete = is_complete(export_dir)
  if not (complete or tf.io.gfile.exists(export_dir)):
    raise FileNotFoundError(
        f'{export_dir}: no SavedModel; training writes it at its end, unless '
        'outputs.saved_model=False')
  try:
    loaded = tf.saved_model.load(export_dir)
    if SIGNATURE not in loaded.signatures:
      raise ValueError(f'no {SIGNATURE} signature')
  except (OSError, ValueError, tf.errors.OpError):
    if complete:
      raise
    raise _incomplete(export_dir) from None
  if not complete:
    logging.warning('%s has no %s (an export of an earlier version, or one '
                    'cut short); it loads whole, so it is used', export_dir,
                    MARKER)
  return loaded


def _write_marker(export_dir: str, *, model_name: str) -> None:
  """export_dir/MARKER: what was exported, and that all of it is there."""
  files = {}
  for folder, _, names in tf.io.gfile.walk(export_dir):
    for name in names:
      file_path = os.path.join(folder, name)
      files[os.path.relpath(file_path, export_dir)] = tf.io.gfile.stat(
          file_path).length
  workdir_lib.write_atomically(os.path.join(export_dir, MARKER), json.dumps({
      'format': 'SavedModel', 'signature': SIGNATURE, 'model': model_name,
      'written': datetime.datetime.now().astimezone().isoformat(
          timespec='seconds'),
      'files': dict(sorted(files.items()))}, indent=2))


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


# A mixed-precision model's float32 twin, by model, as long as it lives.
_TWINS = weakref.WeakKeyDictionary()


def _computing_in_float32(model: keras.Model) -> keras.Model:
  """model, or for one trained in mixed precision its float32 twin.

  LiteRT's converter has no bfloat16 kernels, and a CPU without bfloat16
  units runs float32 faster. Nothing is lost: mixed precision keeps the
  variables in float32, and the twin gets them as they are.
  """
  if not model.dtype_policy.name.startswith('mixed_'):
    return model
  twin = _TWINS.get(model)
  if twin is None:  # Built once: the export and the plots each need it.
    twin = _TWINS[model] = model.__class__.from_config(
        _float32_policies(model.get_config()))
  twin.set_weights(model.get_weights())
  return twin


def _serving(model: keras.Model):
  """The export's one function: uint8 images [N, 28, 28] in, scaled here as
  in training; dropout off, batch norm frozen; float32 probabilities and
  the classes out, whatever the model computes in."""

  def serve(images):
    logits = tf.cast(model(models.model_input(images), training=False),
                     tf.float32)
    return {'probabilities': tf.nn.softmax(logits),
            'classes': tf.argmax(logits, axis=-1)}
  return serve


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
  archive = keras.export.ExportArchive()
  archive.track(model)
  # Naming the endpoint serving_default makes it the one signature.
  archive.add_endpoint(
      SIGNATURE, _serving(model),
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


Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _batched(serve, batch_size: int) -> Predict:
  def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    outputs = [serve(images=tf.constant(images[i:i + batch_size]))
               for i in range(0, len(images), batch_size)]
    return (np.concatenate([o['probabilities'].numpy() for o in outputs]),
            np.concatenate([o['classes'].numpy() for o in outputs]))
  return predict


def predict_fn(model: keras.Model, *, batch_size: int = 1000) -> Predict:
  """predict(images) -> (probabilities, classes), as `load_predict_fn`'s,
  computed by the export's own function on model in memory: what a run
  draws its plots with, without loading back what it just wrote."""
  # Eager: a dozen batches' ops cost less than tracing them.
  return _batched(_serving(_computing_in_float32(model)), batch_size)


def load_predict_fn(export_dir: str, *, batch_size: int = 1000) -> Predict:
  """Loads an export; returns predict(images) -> (probabilities, classes).

  The returned function takes uint8 images [N, 28, 28] as numpy and returns
  numpy arrays, float32 [N, 10] and int64 [N]. It feeds the images
  batch_size at a time, so a whole test set does not need the memory of one
  giant batch.

  Raises:
    FileNotFoundError: there is no export.
    errors.WorkdirError: it is incomplete (`check_complete`).
  """
  loaded = _load(export_dir)

  def serve(**images):
    # Looked up here so that predict keeps `loaded`, which owns the variables.
    return loaded.signatures[SIGNATURE](**images)
  return _batched(serve, batch_size)


class SavedModel(actions.Action):
  """WORKDIR/export, at the end of a run, if new or missing.

  Every worker exports, as with checkpoints (the model's functions are
  traced under the strategy, a collective); only the chief's is kept. The
  chief's goes to a temporary folder first, renamed into place when
  complete, and marked (MARKER): an export without its marker, cut short or
  of an earlier version, is made again at the next start.
  """

  every_worker = True

  def finish(self, context, *, trained):
    final = workdir_lib.path(context.workdir, workdir_lib.EXPORT)
    # Every worker decides alike: from the chief's workdir, which all read.
    if not trained and is_complete(final):
      return
    if not context.chief:
      directory = tempfile.mkdtemp()
      export_saved_model(context.model, directory)
      workdir_lib.remove(directory)
      return
    staging = workdir_lib.temporary_name(final)
    export_saved_model(context.model, staging)
    remote = paths.is_remote(final)
    if not remote:  # Marked before the rename, which is atomic here.
      _write_marker(staging, model_name=context.config.model.name)
    if tf.io.gfile.exists(final):  # Unmarked, or trained since.
      workdir_lib.remove(final)  # Never through a link.
    tf.io.gfile.rename(staging, final)
    if remote:  # Marked after the rename, which copies object by object.
      _write_marker(final, model_name=context.config.model.name)
    logging.info('Exported the model to %s', final)
