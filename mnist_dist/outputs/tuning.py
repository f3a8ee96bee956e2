"""The metric Vertex AI's hyperparameter tuning reads, after each evaluation."""

import json
import os
import time

import tensorflow as tf

from mnist_dist.outputs import actions
from mnist_dist.outputs import metrics_file


# The service sets it in a trial's environment.
TRIAL_VARIABLE = 'CLOUD_ML_TRIAL_ID'


class TuningService(actions.Action):
  """Reports `metric` of every record so far, inside a tuning trial only.

  After metrics_file.MetricsFile in the list of actions: it reports what
  that file holds, the records of earlier starts of the trial included.
  """

  def __init__(self, *, metric: str = 'eval_accuracy'):
    self._metric = metric

  def record(self, context, record):
    del record  # metrics.jsonl holds it, and the ones before it.
    if TRIAL_VARIABLE in os.environ:  # Else nothing to read the file for.
      report_to_tuning_service(metrics_file.read_metrics(context.workdir),
                               metric=self._metric)


def report_to_tuning_service(records: list[dict], *, metric: str) -> None:
  """Writes `metric` where Vertex AI's hyperparameter tuning reads it.

  Only inside a tuning trial (the service sets CLOUD_ML_TRIAL_ID). The format
  is that of Google's cloudml-hypertune library, which the service reads:
  the file $CLOUD_ML_HP_METRIC_FILE (default /tmp/hypertune/output.metrics)
  holds the last 100 reports, one JSON object per line, sorted keys, values
  as strings but the timestamp.
  """
  trial = os.environ.get(TRIAL_VARIABLE)
  if trial is None:
    return
  path = os.environ.get('CLOUD_ML_HP_METRIC_FILE',
                        '/tmp/hypertune/output.metrics')
  lines = [json.dumps({'timestamp': time.time(), 'trial': trial,
                       metric: str(float(record[metric])),
                       'global_step': str(int(record['step']))},
                      sort_keys=True)
           for record in records[-100:]]
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(''.join(line + '\n' for line in lines))
