"""Actions: the controller calls every output at its points, and an output
of a user's own joins them without any change to the package."""

import csv
import os
import re

import pytest

from helpers import ROOT
from helpers import small_config
from mnist_dist import train
from mnist_dist.base import errors
from mnist_dist.outputs import actions
from mnist_dist.outputs import metrics_file

_DENSE = {'model.name': 'dense', 'train.epochs': 2}  # 16 steps an epoch.


class _Calls(actions.Action):
  """Notes each hook it is called with."""

  def __init__(self):
    self.calls = []

  def start(self, context, *, step):
    self.calls.append(('start', step))

  def loop_start(self, context, *, step, num_steps):
    self.calls.append(('loop_start', step, num_steps))

  def loop_end(self, context, *, step, scalars):
    self.calls.append(('loop_end', step, sorted(scalars)))

  def record(self, context, record):
    self.calls.append(('record', record['step']))

  def finish(self, context, *, trained):
    self.calls.append(('finish', trained))


def test_hooks_are_called_in_the_order_of_the_run(tmp_path):
  calls = _Calls()
  train.train_and_evaluate(small_config(_DENSE), str(tmp_path),
                           actions=[calls])
  scalars = ['accuracy', 'examples_per_s', 'learning_rate', 'loss']
  def epoch(start):  # Two loops of 8 steps, then the evaluation's record.
    return [('loop_start', start, 8), ('loop_end', start + 8, scalars),
            ('loop_start', start + 8, 8), ('loop_end', start + 16, scalars),
            ('record', start + 16)]
  assert calls.calls == [('start', 0), *epoch(0), *epoch(16),
                         ('finish', True)]

  # Started again, finished: only what an action may have left missing.
  again = _Calls()
  train.train_and_evaluate(small_config(_DENSE), str(tmp_path),
                           actions=[again])
  assert again.calls == [('start', 32), ('finish', False)]


def test_a_plain_function_gets_every_record(tmp_path):
  seen = []
  result = train.train_and_evaluate(small_config(_DENSE), str(tmp_path),
                                    actions=[seen.append])
  assert seen == result.metrics and len(seen) == 2


def test_what_is_neither_action_nor_function_is_refused():
  with pytest.raises(TypeError, match='neither an actions.Action'):
    actions.as_action('metrics.csv')


def test_the_csv_action_of_the_design_notes_runs(tmp_path):
  # The very code docs/design.md shows, run as it stands there.
  with open(os.path.join(ROOT, 'docs', 'design.md')) as f:
    (example,) = re.findall(r'```python\n(import csv.*?)```', f.read(),
                            flags=re.DOTALL)
  assert len(example.splitlines()) <= 20  # "An output in about 15 lines."
  namespace = {'config': small_config(_DENSE), 'workdir': str(tmp_path)}
  exec(example, namespace)  # pylint: disable=exec-used
  records = train.train_and_evaluate(small_config(_DENSE),
                                     str(tmp_path)).metrics
  assert not records  # Finished: the second start trains nothing.
  with open(tmp_path / 'evaluations.csv') as f:
    rows = list(csv.DictReader(f))
  assert [int(row['step']) for row in rows] == [16, 32]
  assert [float(row['eval_accuracy']) for row in rows] == pytest.approx(
      [r['eval_accuracy'] for r in metrics_file.read_metrics(str(tmp_path))])


def _write_metrics(workdir, lines):
  with open(os.path.join(workdir, 'metrics.jsonl'), 'wb') as f:
    f.write(b''.join(line + b'\n' for line in lines))


@pytest.mark.parametrize('damaged', [
    b'{"step": 32, "eval_acc',  # Torn.
    b'[1, 2]', b'{"epoch": 2}',  # Not a record.
    b'\xff\xfe'])  # Not UTF-8.
def test_a_damaged_middle_line_of_the_metrics_is_one_line(tmp_path, damaged):
  _write_metrics(tmp_path, [b'{"step": 16}', damaged, b'{"step": 48}'])
  with pytest.raises(errors.WorkdirError,
                     match=r'metrics.jsonl: line 2 of 3 is damaged'):
    metrics_file.read_metrics(str(tmp_path))


def test_a_trainer_on_damaged_metrics_stops_with_one_line(tmp_path):
  config = small_config(_DENSE)
  train.train_and_evaluate(config, str(tmp_path))
  path = tmp_path / 'metrics.jsonl'
  first, second = path.read_text().splitlines()
  path.write_text(f'{first[:30]}\n{second}\n')
  with pytest.raises(errors.WorkdirError, match='line 1 of 2 is damaged'):
    train.train_and_evaluate(config, str(tmp_path))
