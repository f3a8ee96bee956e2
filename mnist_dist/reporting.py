"""What a run tells its user: a log line per loop and metrics.jsonl."""

import dataclasses
import json
import os
import time

from absl import logging
import tensorflow as tf

from mnist_dist import workdir as workdir_lib


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


@dataclasses.dataclass(frozen=True)
class LoopMetrics:
  """One training loop's numbers, computed once for the log and TensorBoard."""
  step: int  # The global step after the loop.
  epoch: int  # The epoch the loop trained in, from 1.
  loss: float  # Mean per-example loss over the loop.
  accuracy: float
  learning_rate: float  # Of the loop's last step.
  examples_per_s: float
  eta_s: float  # Until the last step, at this process's mean speed so far.

  def scalars(self) -> dict[str, float]:
    """What TensorBoard plots of each loop."""
    return {'loss': self.loss, 'accuracy': self.accuracy,
            'learning_rate': self.learning_rate,
            'examples_per_s': self.examples_per_s}


def loop_line(metrics: LoopMetrics, *, total_steps: int, epochs: int) -> str:
  """One concise, greppable line per training loop."""
  return (f'step {metrics.step}/{total_steps} epoch {metrics.epoch}/{epochs} | '
          f'loss {metrics.loss:.4f} accuracy {metrics.accuracy:.2%} | '
          f'lr {metrics.learning_rate:.3g} | '
          f'{metrics.examples_per_s:,.0f} examples/s | '
          f'ETA {format_duration(metrics.eta_s)}')


class Progress:
  """Where a run shows its progress: a line per loop in the log.

  One object per run; disabled on the workers that are not the chief.
  """

  def __init__(self, *, total_steps: int, epochs: int, enabled: bool):
    self._total_steps = total_steps
    self._epochs = epochs
    self._enabled = enabled

  def loop(self, metrics: LoopMetrics) -> None:
    """After each training loop."""
    if self._enabled:
      logging.info(loop_line(metrics, total_steps=self._total_steps,
                             epochs=self._epochs))

  def message(self, text: str) -> None:
    """Any other line of the run's story (evaluations, checkpoints)."""
    if self._enabled:
      logging.info('%s', text)

  def close(self) -> None:
    """At the end of the run, or when it stops."""


class MetricsWriter:
  """Writes one JSON object per evaluation to WORKDIR/metrics.jsonl.

  The file is rewritten whole on every record (it holds one line per epoch),
  which works the same on local disks and on gs://, where appending does not.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.path = workdir_lib.path(workdir, workdir_lib.METRICS)
    tf.io.gfile.makedirs(workdir)
    # Records past the checkpoint a run resumes from will be made again.
    self.records = [r for r in read_metrics(workdir)
                    if r['step'] <= resume_step]

  def write(self, record: dict) -> None:
    self.records.append(record)
    with tf.io.gfile.GFile(self.path, 'w') as f:
      f.write(''.join(json.dumps(r) + '\n' for r in self.records))


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, oldest first ([] if none)."""
  path = workdir_lib.path(workdir, workdir_lib.METRICS)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def report_to_tuning_service(records: list[dict], *, metric: str) -> None:
  """Writes `metric` where Vertex AI's hyperparameter tuning reads it.

  Only inside a tuning trial (the service sets CLOUD_ML_TRIAL_ID). The format
  is that of Google's cloudml-hypertune library, which the service reads:
  the file $CLOUD_ML_HP_METRIC_FILE (default /tmp/hypertune/output.metrics)
  holds the last 100 reports, one JSON object per line, sorted keys, values
  as strings but the timestamp.
  """
  trial = os.environ.get('CLOUD_ML_TRIAL_ID')
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
