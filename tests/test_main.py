"""The entry point as a user runs it: a real training run, what it prints,
and bad input."""

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from helpers import assert_refused
from helpers import ROOT
from helpers import run_main
from helpers import slow_after
from helpers import start_main
from helpers import write_idx
from mnist_dist.base import console
from mnist_dist.data import idx


@pytest.mark.slow
def test_conv_bn_one_epoch_on_real_mnist(tmp_path, mnist_dir):
  # One epoch with the learning rate decayed over it (0.01 -> 0.0005): with
  # the 10-epoch schedule's constant 0.01, epoch 1 ends anywhere in 96-98.4%.
  process = run_main(
      '--config=configs/conv_bn.py', f'--workdir={tmp_path}',
      f'--config.data.dir={mnist_dir}', '--config.train.epochs=1',
      '--config.optimizer.staircase=False', '--config.optimizer.decay_rate=0.05')
  assert process.returncode == 0, process.stderr[-3000:]
  with open(os.path.join(tmp_path, 'metrics.jsonl')) as f:
    (record,) = [json.loads(line) for line in f]
  assert record['eval_examples'] == 10_000
  assert record['eval_accuracy'] >= 0.985
  assert record['step'] == 937 and record['epoch'] == 1
  expected_keys = {'step', 'epoch', 'train_loss', 'train_accuracy', 'eval_loss',
                   'eval_accuracy', 'eval_examples', 'learning_rate',
                   'elapsed_s', 'examples_per_s'}
  assert expected_keys <= set(record)
  for output in ('export/saved_model.pb', 'plots/training_curves.png',
                 'plots/predictions.png', 'tensorboard/eval', 'config.json'):
    assert os.path.exists(tmp_path / output), output
  loop_lines = [l for l in process.stderr.splitlines() if 'examples/s' in l]
  assert len(loop_lines) == 10  # 937 steps in loops of 100.
  assert 'step 937/937 epoch 1/1' in loop_lines[-1] and 'ETA' in loop_lines[-1]


@pytest.mark.slow
def test_a_run_exits_as_soon_as_it_is_done(tmp_path, mnist_dir):
  """The process is gone within seconds of its last line, after 10 epochs.

  When tf.data's autotuner ran in the run's input, this run lingered 26 to
  32 s after its last line in 3 of 4 tries on a quiet machine (1.3 s in the
  other; 2 to 10 s under load): dropping the input waited out the
  autotuners' sleeps (input_pipeline's `_without_autotune`). A race, so the
  old code failed here in most runs, not all. Now about 1 s, Python's own
  exit.
  """
  process = start_main(
      '--config=configs/dense.py', f'--workdir={tmp_path}',
      f'--config.data.dir={mnist_dir}', '--config.train.epochs=10',
      '--config.outputs.tensorboard=False',
      '--config.outputs.saved_model=False', '--config.outputs.plots=False')
  lines = []
  for line in process.stderr:
    lines.append(line)
    last_line = time.time()
  assert process.wait(timeout=300) == 0, ''.join(lines)[-3000:]
  assert 'eval epoch 10:' in ''.join(lines)
  assert time.time() - last_line < 5  # The issue asks 2 s; slack for load.


@pytest.mark.parametrize('args,message', slow_after(2, [
    (['--config.data.dir=/nonexistent/mnist'],
     '/nonexistent/mnist: no such folder'),
    (['--config.model.name=resnet'], "model.name='resnet' is not one of"),
    (['--config.data.source=synthetic', '--config.train.steps_per_loop=5000'],
     'train.steps_per_loop=5000 is larger than an epoch'),
    (['--config.data.source=synthetic', '--config.distribution.cpu_devices=2',
      '--config.train.global_batch_size=65'],
     'train.global_batch_size=65 is not divisible by the 2 replicas'),
    (['--config.train.epoch=3'],
     'unknown config key \'epoch\' Did you mean "epochs"'),
    (['--config=configs/nope.py'], "No such file or directory: 'configs/nope.py'"),
    (['--config.data.dir=nosuch://bucket/mnist'], 'nosuch://bucket/mnist'),
]))
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
  assert_refused(run_main(f'--workdir={tmp_path}', *args, timeout=120),
                 says=message)


@pytest.mark.parametrize('file,array,magic,message', slow_after(1, [
    (idx.FILES['test'][1], np.zeros((4, 28, 28)), idx.IMAGES_MAGIC,
     'wrong magic number 2051'),
    (idx.FILES['test'][1], np.zeros(3), idx.LABELS_MAGIC,
     'holds 4 images but'),
    (idx.FILES['test'][1], np.array([0, 1, 10, 2]), idx.LABELS_MAGIC,
     'label 10 at index 2 is outside 0..9'),
    (idx.FILES['train'][0], np.zeros((6, 28, 27)), idx.IMAGES_MAGIC,
     'images are 28x27, expected 28x28'),
]))
def test_bad_data_is_named_before_training(tmp_path, good_dir, file, array,
                                           magic, message):
  for stale in (file, file + '.gz'):
    if os.path.exists(good_dir / stale):
      os.remove(good_dir / stale)
  write_idx(good_dir / file, array, magic)
  process = run_main(f'--workdir={tmp_path / "run"}',
                     f'--config.data.dir={good_dir}', timeout=120)
  assert assert_refused(process, says=message).startswith(
      f'error: {good_dir}/')
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


# 16 steps in loops of 8, an evaluation, a checkpoint and the export.
_SMALL_RUN = ('--config=configs/dense.py', '--config.data.source=synthetic',
              '--config.data.synthetic_train_examples=1024',
              '--config.data.synthetic_eval_examples=500',
              '--config.train.global_batch_size=64',
              '--config.train.steps_per_loop=8', '--config.train.epochs=1',
              '--config.outputs.plots=False',
              '--config.outputs.tensorboard=False')
_CPP_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\] ', re.M)


def _environment(**variables):
  """This process's environment, without a TF_CPP_MIN_LOG_LEVEL of its own."""
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  return {**env, **variables}


def _run(*args, **env) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'mnist_dist.main', *args], cwd=ROOT,
      env=_environment(**env), capture_output=True, text=True, timeout=300,
      check=False)


# Modules a run imports only for an output or a source that uses them.
_UNUSED_WHEN_OFF = ('matplotlib', 'PIL', 'IPython', 'ai_edge_litert',
                    'tensorflow_datasets', 'mnist_dist.outputs.plots',
                    'mnist_dist.outputs.litert', 'mnist_dist.outputs.export',
                    'mnist_dist.outputs.summaries', 'mnist_dist.tools.images')
# `python -m mnist_dist.main ARGS` that prints, as it exits, which of those
# were imported (a run that succeeds ends in os._exit, skipping atexit).
_MAIN_REPORTING_MODULES = f"""
import os, runpy, sys
exit_now, main_pid = os._exit, os.getpid()
def report_and_exit(code):
  if os.getpid() != main_pid:  # The C++ log filter's fork (console.py).
    exit_now(code)
  print(sorted(
      name for name in {_UNUSED_WHEN_OFF!r}
      if any(m == name or m.startswith(name + '.') for m in sys.modules)),
      flush=True)
  exit_now(code)
os._exit = report_and_exit
runpy.run_module('mnist_dist.main', run_name='__main__')
"""


def test_a_run_imports_only_what_it_uses(tmp_path):
  # Every output that can be off is, and the data is synthetic: no plots,
  # image decoding, LiteRT or TFDS, nor what Keras imports in case
  # (console's _KERAS_EXTRAS). Before: all but TFDS and images.
  process = subprocess.run(
      [sys.executable, '-c', _MAIN_REPORTING_MODULES, f'--workdir={tmp_path}',
       *_SMALL_RUN, '--config.outputs.saved_model=False'],
      cwd=ROOT, env=_environment(), capture_output=True, text=True,
      timeout=300, check=False)
  assert process.returncode == 0, process.stderr[-3000:]
  assert process.stdout.strip() == '[]'
  assert 'eval epoch 1:' in process.stderr


def test_a_run_prints_its_own_lines_only(tmp_path):
  process = _run(f'--workdir={tmp_path}', *_SMALL_RUN)
  assert process.returncode == 0, process.stderr[-3000:]
  lines = process.stderr.splitlines()
  # No C++ notices, no INFO of TensorFlow's modules: every line is one of
  # the run's own, after its time.
  strays = [line for line in lines if not re.match(r'\d\d:\d\d:\d\d ', line)]
  assert not strays, process.stderr
  assert 'Sharding callback' not in process.stderr
  loop_lines = [line for line in lines if 'examples/s' in line]
  assert len(loop_lines) == 2, lines
  assert loop_lines[0][9:].startswith('step 8/16 epoch 1/1 | loss ')
  assert loop_lines[1][9:].startswith('step 16/16 epoch 1/1 | loss ')
  assert any(line[9:].startswith('eval epoch 1: loss ') for line in lines)


@pytest.mark.slow  # A trainer process.
def test_tf_logs_shows_tensorflows_lines_too(tmp_path):
  process = _run(f'--workdir={tmp_path}', *_SMALL_RUN, '--tf_logs')
  assert process.returncode == 0, process.stderr[-3000:]
  assert _CPP_LINE.search(process.stderr), process.stderr
  assert re.search(r'\[functional_saver.py:\d+\] Sharding callback',
                   process.stderr), process.stderr
  assert process.stderr.count('Assets written to') == 1  # Not twice.
  assert ' step 16/16 epoch 1/1 | loss ' in process.stderr


def _run_on_a_terminal(*args, timeout=300) -> tuple[int, str]:
  """Runs the entry point with stdout and stderr on a 120x40 terminal."""
  leader, follower = pty.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
  process = subprocess.Popen(
      [sys.executable, '-m', 'mnist_dist.main', *args], cwd=ROOT,
      env=_environment(), stdin=subprocess.DEVNULL, stdout=follower,
      stderr=follower)
  os.close(follower)
  output = b''
  deadline = time.time() + timeout
  try:
    while time.time() < deadline:
      if select.select([leader], [], [], 1)[0]:
        try:
          chunk = os.read(leader, 65536)
        except OSError:  # EIO: no process has the terminal open any more.
          break
        if not chunk:
          break
        output += chunk
  finally:
    os.close(leader)
    if process.poll() is None:
      process.kill()
  return process.wait(timeout=60), output.decode()


@pytest.mark.slow  # A trainer process.
def test_a_terminal_shows_a_progress_bar(tmp_path):
  code, output = _run_on_a_terminal(f'--workdir={tmp_path}', *_SMALL_RUN)
  assert code == 0, output[-3000:]
  frames = re.findall(r'\r(epoch [^\r\n]*)', output)
  assert frames, output
  assert re.fullmatch(r'epoch 1/1 100%\|█+\| 16/16, loss \d\.\d{4}, '
                      r'acc \d+\.\d\d%, [\d,]+ ex/s, ETA 0s *', frames[-1])
  assert 'examples/s' not in output  # The bar, instead of a line per loop.
  # Written above the bar, after tqdm cleared its line.
  assert re.search(r'\r *\r\d\d:\d\d:\d\d eval epoch 1: ', output), output


_NOTICE = ('WARNING: All log messages before absl::InitializeLog() is called '
           'are written to STDERR')
# A stand-in for TensorFlow: C++ lines as its libraries log them on loading,
# the level it was given, then a fatal line and an abort.
_FAKE_TENSORFLOW = r"""
import os
os.write(2, b'WARNING: All log messages before absl::InitializeLog() is '
            b'called are written to STDERR\n')
for severity in 'IWE':
  os.write(2, f'{severity}0000 00:00:1795676159.673100   23720 port.cc:153] '
              f'{severity} line\n'.encode())
level = os.environ.get('TF_CPP_MIN_LOG_LEVEL')
os.write(2, f'TF_CPP_MIN_LOG_LEVEL={level}\n'.encode())
os.write(2, b'F0000 00:00:1795676159.9   23720 cpu_feature_guard.cc:9] F line')
os.abort()
"""


@pytest.mark.parametrize('args,env,shown', [
    ([], {}, ['TF_CPP_MIN_LOG_LEVEL=3', 'F line']),
    (['--tf_logs'], {}, [_NOTICE, 'I line', 'W line', 'E line',
                         'TF_CPP_MIN_LOG_LEVEL=None', 'F line']),
    (['--tf_logs'], {'TF_CPP_MIN_LOG_LEVEL': '2'},
     ['E line', 'TF_CPP_MIN_LOG_LEVEL=2', 'F line']),
    ([], {'TF_CPP_MIN_LOG_LEVEL': '0'}, [_NOTICE, 'I line', 'W line', 'E line',
                                         'TF_CPP_MIN_LOG_LEVEL=0', 'F line']),
])
def test_cpp_lines_as_tensorflow_loads(tmp_path, args, env, shown):
  (tmp_path / 'tensorflow').mkdir()
  (tmp_path / 'tensorflow' / '__init__.py').write_text(_FAKE_TENSORFLOW)
  process = _run(f'--workdir={tmp_path / "run"}', *args,
                 PYTHONPATH=str(tmp_path), **env)
  # What loading says before it aborts shows, the line cut short too.
  assert process.returncode == -signal.SIGABRT
  assert [line.split('] ')[-1] for line in process.stderr.splitlines()] == (
      shown)


@pytest.mark.parametrize('argv,asked', [
    ([], False), (['--tf_logs'], True), (['-tf_logs'], True),
    (['--tf_logs=true'], True), (['--tf_logs=false'], False),
    (['--tf_logs', '--notf_logs'], False), (['--workdir=tf_logs'], False),
])
def test_tf_logs_is_read_before_the_flags_are_parsed(argv, asked):
  # pylint: disable-next=protected-access
  assert console._tf_logs_asked(['main.py', *argv]) == asked
