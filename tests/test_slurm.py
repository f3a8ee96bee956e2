"""launch/slurm.sbatch on a real one-node Slurm (launch/slurm_one_node.sh;
.ci/run starts it): a job of several tasks trains to the end, survives a
preemption and a lost task by requeueing, and fails at once on bad input.

Skipped where no Slurm answers, except under CI, where that fails.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from helpers import assert_same_run
from helpers import ROOT

pytestmark = pytest.mark.slow

SBATCH = os.path.join(ROOT, 'launch', 'slurm.sbatch')
TASKS = 3
# 80 steps an epoch, a checkpoint every 8, 3 epochs: long enough to be
# stopped mid-run, short enough for CI.
_RUN = ('--config=dense', '--config.data.source=synthetic',
        '--config.data.synthetic_train_examples=9600',
        '--config.data.synthetic_eval_examples=600',
        '--config.train.global_batch_size=120',
        '--config.train.epochs=3', '--config.train.steps_per_loop=4',
        '--config.checkpoint.every_steps=8',
        '--config.outputs.tensorboard=False',
        '--config.outputs.saved_model=False', '--config.outputs.plots=False')


def _slurm_answers() -> bool:
  if not shutil.which('sbatch'):
    return False
  return subprocess.run(['sinfo', '-h'], capture_output=True,
                        timeout=30).returncode == 0


if not _slurm_answers():
  if os.environ.get('CI'):
    raise RuntimeError('CI: no Slurm answers; .ci/run starts it with '
                       'launch/slurm_one_node.sh')
  pytest.skip('no Slurm here (launch/slurm_one_node.sh starts one)',
              allow_module_level=True)


class Job:
  """One sbatch of launch/slurm.sbatch, followed through its requeues."""

  def __init__(self, workdir, *trainer_flags, tasks: int = TASKS):
    self.workdir = str(workdir)
    self.log = os.path.join(self.workdir + '.log')
    env = {**os.environ,
           # The virtualenv's mnist-dist-train, as an activated one gives it.
           'PATH': os.path.dirname(sys.executable) + os.pathsep +
                   os.environ['PATH']}
    self.id = subprocess.run(
        ['sbatch', '--parsable', f'--ntasks={tasks}', f'--output={self.log}',
         f'--chdir={ROOT}', SBATCH, f'--workdir={self.workdir}', *_RUN,
         *trainer_flags],
        env=env, capture_output=True, text=True, check=True).stdout.strip()

  def fields(self) -> dict[str, str]:
    line = subprocess.run(['scontrol', 'show', 'job', '-o', self.id],
                          capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r'(\w+)=(\S*)', line))

  @property
  def output(self) -> str:
    try:
      with open(self.log) as f:
        return f.read()
    except FileNotFoundError:
      return ''

  def wait_for(self, pattern: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if re.search(pattern, self.output, re.MULTILINE):
        return
      time.sleep(0.2)
    raise AssertionError(f'no {pattern!r} in:\n{self.output[-3000:]}')

  def mid_run(self) -> None:
    """Waits for a checkpoint past the first and the chief's next loop."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
      saved = tf.train.latest_checkpoint(
          os.path.join(self.workdir, 'checkpoints'))
      if saved and re.search(r'^0: .*step (1[2-9]|[2-9]\d)/', self.output,
                             re.MULTILINE):
        return
      time.sleep(0.2)
    raise AssertionError(self.output[-3000:])

  def finish(self, timeout: float = 600) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      fields = self.fields()
      if fields['JobState'] in ('COMPLETED', 'FAILED', 'CANCELLED',
                                'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY'):
        return fields
      time.sleep(1)
    subprocess.run(['scancel', self.id], check=False)
    raise AssertionError(f'job {self.id} still {fields["JobState"]}:\n'
                         f'{self.output[-3000:]}')

  def task_pid(self, rank: int) -> int:
    """The pid of the trainer of task `rank`."""
    found = subprocess.run(['pgrep', '-f', '--', f'--workdir={self.workdir}'],
                           capture_output=True, text=True).stdout.split()
    for pid in found:
      try:
        with open(f'/proc/{pid}/environ', 'rb') as f:
          environ = dict(item.split(b'=', 1) for item in f.read().split(b'\0')
                         if b'=' in item)
      except OSError:
        continue
      if (environ.get(b'SLURM_PROCID') == str(rank).encode() and
          environ.get(b'SLURM_STEP_ID', b'batch') != b'batch' and
          b'mnist-dist-train' in open(f'/proc/{pid}/cmdline', 'rb').read()):
        return int(pid)
    raise AssertionError(f'no trainer of task {rank}:\n{self.output[-3000:]}')


def _assert_reads_like_a_local_run(output: str) -> None:
  assert 'Traceback' not in output
  for wall in ('ring_alg.cc', 'GRPC error information', 'All log messages',
               'forcing job termination'):
    assert wall not in output, wall


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  job = Job(tmp_path_factory.mktemp('uninterrupted') / 'run')
  fields = job.finish()
  assert (fields['JobState'], fields['Restarts']) == ('COMPLETED', '0'), (
      job.output[-3000:])
  return job


def test_a_job_of_several_tasks_trains_as_one_cluster(uninterrupted):
  output = uninterrupted.output
  # Every task joined one MultiWorkerMirrored cluster of TASKS replicas;
  # only the chief (task 0) tells the run's story.
  assert re.search(r'^0: .*(MultiWorkerMirrored|CollectiveAllReduce)'
                   rf'Strategy with {TASKS} replicas', output, re.MULTILINE), (
                       output[-3000:])
  assert re.search(r'^0: .*eval epoch 3:', output, re.MULTILINE)
  assert not re.search(r'^[12]: .*eval epoch', output, re.MULTILINE)
  assert 'slurm.sbatch: done' in output
  _assert_reads_like_a_local_run(output)


def test_a_preempted_job_requeues_and_ends_as_the_uninterrupted_one(
    tmp_path, uninterrupted):
  job = Job(tmp_path / 'run')
  job.mid_run()
  # Every task, the batch script and srun: as a preemption with --full does.
  subprocess.run(['scancel', '--full', '--signal=TERM', job.id], check=True)
  fields = job.finish()
  output = job.output
  assert (fields['JobState'], fields['Restarts']) == ('COMPLETED', '1'), (
      output[-3000:])
  assert 'requeueing to resume' in output and 'Resuming from' in output
  assert_same_run(job.workdir, uninterrupted.workdir, epochs=3)


def test_a_lost_task_requeues_and_ends_as_the_uninterrupted_one(
    tmp_path, uninterrupted):
  job = Job(tmp_path / 'run')
  job.mid_run()
  os.kill(job.task_pid(1), signal.SIGKILL)
  fields = job.finish()
  output = job.output
  assert (fields['JobState'], fields['Restarts']) == ('COMPLETED', '1'), (
      output[-3000:])
  # The survivors name the lost task in one line each.
  assert re.search(r'^[02]: .*error: .*worker 1', output, re.MULTILINE), (
      output[-3000:])
  assert_same_run(job.workdir, uninterrupted.workdir, epochs=3)
  _assert_reads_like_a_local_run(output)


def test_a_bad_flag_fails_the_job_with_one_line_and_no_requeue(tmp_path):
  job = Job(tmp_path / 'run', '--config.train.epochs=-1')
  fields = job.finish()
  output = job.output
  assert (fields['JobState'], fields['Restarts'], fields['ExitCode']) == (
      'FAILED', '0', '2:0'), output[-3000:]
  errors = re.findall(r'^\d: error: (.*)', output, re.MULTILINE)
  assert errors and all('train.epochs=-1' in line for line in errors), output
  assert 'not requeued' in output
  _assert_reads_like_a_local_run(output)
