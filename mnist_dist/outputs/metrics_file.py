"""WORKDIR/metrics.jsonl: one JSON record per evaluation (fields: README)."""

import json

from absl import logging
import tensorflow as tf

from mnist_dist.base import workdir as workdir_lib
from mnist_dist.base.errors import WorkdirError
from mnist_dist.outputs import actions


class MetricsFile(actions.Action):
  """Writes one JSON object per evaluation to WORKDIR/metrics.jsonl.

  The file is rewritten whole on every record (it holds one line per epoch),
  which works the same on local disks and on gs://, where appending does not,
  and atomically, so a stop while writing leaves the previous version.
  """

  def __init__(self):
    self.records = []

  def start(self, context, *, step):
    tf.io.gfile.makedirs(context.workdir)
    # Records past the checkpoint a run resumes from will be made again.
    self.records = [r for r in read_metrics(context.workdir)
                    if r['step'] <= step]

  def record(self, context, record):
    self.records.append(record)
    workdir_lib.write_atomically(
        workdir_lib.path(context.workdir, workdir_lib.METRICS),
        ''.join(json.dumps(r) + '\n' for r in self.records))


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, oldest first ([] if none).

  The trainer writes the file whole, but another writer (an older version, a
  copy cut short) may leave its last line torn: it is dropped with a warning,
  and the record is made again by the epoch that resumes. Damage anywhere
  else (a line that is not a JSON record with a step) cannot come from a
  stop, and is not guessed around.

  Raises:
    WorkdirError: a line before the last is damaged, naming it.
  """
  path = workdir_lib.path(workdir, workdir_lib.METRICS)
  if not tf.io.gfile.exists(path):
    return []
  with tf.io.gfile.GFile(path, 'rb') as f:
    lines = [line for line in f.read().splitlines() if line.strip()]
  records = []
  for number, line in enumerate(lines, start=1):
    record = _record(line)
    if record is not None:
      records.append(record)
    elif number < len(lines):
      raise WorkdirError(
          f'{path}: line {number} of {len(lines)} is damaged ({line[:40]!r}); '
          'it records this run\'s evaluations: restore it, or use a new '
          '--workdir')
    else:
      logging.warning('%s: its last line is torn (%r); dropped.', path,
                      line[:40])
  return records


def _record(line: bytes) -> dict | None:
  """The record a line holds; None if it holds none."""
  try:
    record = json.loads(line.decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  if not isinstance(record, dict) or not isinstance(record.get('step'), int):
    return None
  return record
