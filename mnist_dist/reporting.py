"""What a run tells its user: a log line per loop and metrics.jsonl."""

import json
import os
import time

import tensorflow as tf

METRICS_FILE = 'metrics.jsonl'


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


def loop_line(*, step: int, total_steps: int, epoch: int, epochs: int,
              loss: float, accuracy: float, learning_rate: float,
              examples_per_s: float, eta_s: float) -> str:
  """One concise, greppable line per training loop."""
  return (f'step {step}/{total_steps} epoch {epoch}/{epochs} | '
          f'loss {loss:.4f} accuracy {accuracy:.2%} | '
          f'lr {learning_rate:.3g} | {examples_per_s:,.0f} examples/s | '
          f'ETA {format_duration(eta_s)}')


class MetricsWriter:
  """Writes one JSON object per evaluation to WORKDIR/metrics.jsonl.

  The file is rewritten whole on every record (it holds one line per epoch),
  which works the same on local disks and on gs://, where appending does not.
  """

  def __init__(self, workdir: str, *, resume_step: int = 0):
    self.path = os.path.join(workdir, METRICS_FILE)
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
  path = os.path.join(workdir, METRICS_FILE)
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
