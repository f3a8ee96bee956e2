"""The console scripts' shared tail: an error a tool names is one line and
its exit code; anything else, a bug, keeps its traceback."""

import sys

from absl import flags
import pytest

from mnist_dist import main as main_lib
from mnist_dist.base import cli
from mnist_dist.base import errors


def _run(error, exit_codes, monkeypatch):
  def main(argv):
    del argv
    raise error
  monkeypatch.setattr(sys, 'argv', ['tool'])
  cli.run(main, flags_parser=lambda argv: flags.FLAGS(argv, known_only=True),
          exit_codes=exit_codes)


@pytest.mark.parametrize('error, code, line', [
    (errors.ConfigError('train.epochs=0 must be\n  a positive number'), 2,
     'error: train.epochs=0 must be a positive number'),
    (errors.WorkdirError('/w is in use by pid 7'), 2,
     'error: /w is in use by pid 7'),
    (errors.CheckpointError('ckpt-5 does not fit this model'), 2,
     'error: ckpt-5 does not fit this model'),
    (errors.DataError('t10k: no such file'), 2, 'error: t10k: no such file'),
    (errors.NonFiniteError(17), 3,
     'error: the loss is not finite at step 17; stopped, keeping the last '
     'good checkpoint'),
    (errors.Interrupted('SIGTERM', 52, chief=True), 75,
     'stopped: SIGTERM at step 52: checkpoint saved; run the same command '
     'again to resume'),
    # Retried as a stop is, but an error.
    (errors.TransientError('gs://b/run: its storage failed for now'), 75,
     'error: gs://b/run: its storage failed for now')])
def test_the_trainers_errors_are_one_line_and_their_code(
    error, code, line, monkeypatch, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _run(error, main_lib.EXIT_CODES, monkeypatch)
  assert exit_info.value.code == code
  (printed,) = capsys.readouterr().err.splitlines()
  assert printed.startswith(line)


@pytest.mark.parametrize('bug', [KeyError('epochs'), AttributeError('x'),
                                 TypeError('y')])
def test_a_bug_is_not_reported_as_bad_input(bug, monkeypatch):
  with pytest.raises(type(bug)):
    _run(bug, main_lib.EXIT_CODES, monkeypatch)


def test_every_error_class_has_an_exit_code():
  # A new class of errors.py that main does not map would be a traceback.
  classes = {value for value in vars(errors).values()
             if isinstance(value, type) and issubclass(value, errors.Error)
             and value is not errors.Error}
  assert classes == set(main_lib.EXIT_CODES)
