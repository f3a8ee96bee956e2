"""What a run leaves in its workdir, and config.json, the record of what it is.

  WORKDIR/
    config.json     the run's config (the chief writes it at the start)
    checkpoints/    the chief's checkpoints (`checkpoints.Checkpointer`)
    metrics.jsonl   one JSON record per evaluation (`reporting`)
    tensorboard/    train/ and eval/ summaries (`summaries`)
    export/         the SavedModel, at the end (`export`)
    plots/          PNG plots, at the end (`plots`)

A workdir may be local or on gs://; starting again with the same workdir
resumes its run, which config.json makes safe: a start with other
run-defining values is refused.
"""

import json
import os

import ml_collections
import tensorflow as tf

from mnist_dist.config import ConfigError

CONFIG = 'config.json'
CHECKPOINTS = 'checkpoints'
METRICS = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'
EXPORT = 'export'
PLOTS = 'plots'

# Keys that change the variables, the step -> example mapping or the data: a
# checkpoint made under other values cannot continue this run.
RUN_DEFINING_KEYS = (
    'seed', 'model.name', 'model.width', 'optimizer.name',
    'train.ema_decay', 'train.global_batch_size',
    'train.precision', 'data.source', 'data.train_examples',
    'data.validation_split',
)


def path(workdir: str, name: str) -> str:
  """WORKDIR/name, for one of the names above."""
  return os.path.join(workdir, name)


def _lookup(config_dict: dict, dotted: str):
  for part in dotted.split('.'):
    config_dict = config_dict.get(part, {}) if isinstance(config_dict,
                                                          dict) else None
  return config_dict


def _read_json(workdir: str) -> dict:
  with tf.io.gfile.GFile(path(workdir, CONFIG)) as f:
    return json.load(f)


def check_and_record_config(config, workdir: str, *, write: bool) -> None:
  """Refuses a workdir whose earlier run had other run-defining values.

  Writes WORKDIR/config.json (the chief only, `write`), so that the next
  start, and `python -m mnist_dist.plots`, know what this run was.
  """
  if tf.io.gfile.exists(path(workdir, CONFIG)):
    previous = _read_json(workdir)
    current = json.loads(config.to_json())
    differences = [
        f'{key} was {_lookup(previous, key)!r}, now {_lookup(current, key)!r}'
        for key in RUN_DEFINING_KEYS
        if _lookup(previous, key) != _lookup(current, key)]
    if differences:
      raise ConfigError(
          f'{workdir} holds a run with another config ({"; ".join(differences)}'
          '): use a new --workdir, or the same values to resume it')
  if write:
    tf.io.gfile.makedirs(workdir)
    with tf.io.gfile.GFile(path(workdir, CONFIG), 'w') as f:
      f.write(config.to_json(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run recorded in WORKDIR/config.json."""
  if not tf.io.gfile.exists(path(workdir, CONFIG)):
    raise FileNotFoundError(
        f'{path(workdir, CONFIG)}: no such file; is {workdir} a workdir?')
  return ml_collections.ConfigDict(_read_json(workdir))
