"""The cluster read from what launched the trainer (TF_CONFIG, a Slurm step,
a JobSet's pod), and `auto` picking MultiWorkerMirrored from it."""

import json

import ml_collections
import pytest

from mnist_dist.base import errors
from mnist_dist.distribution import environment
from mnist_dist.distribution import strategy as strategy_lib


@pytest.mark.parametrize('hostlist, hosts', [
    ('vm', ['vm']),
    ('node[01-03,07],gpu7', ['node01', 'node02', 'node03', 'node07', 'gpu7']),
    ('rack1-n[8-10]', ['rack1-n8', 'rack1-n9', 'rack1-n10']),
    ('a[1-2]-b[3-4]', ['a1-b3', 'a1-b4', 'a2-b3', 'a2-b4']),
])
def test_slurm_host_lists_expand_in_order(hostlist, hosts):
  assert environment.expand_hostlist(hostlist) == hosts


def test_slurm_counts_expand():
  assert environment.expand_counts('2(x3),1') == [2, 2, 2, 1]


def _step(**variables):
  return {'SLURM_STEP_NUM_TASKS': '5', 'SLURM_STEP_NODELIST': 'n[1-2]',
          'SLURM_STEP_TASKS_PER_NODE': '3,2',
          'SLURM_STEP_RESV_PORTS': '12009-12011', 'SLURM_JOB_ID': '41',
          **variables}


@pytest.mark.parametrize('distribution, workers', [
    # Ranks in blocks per node, as srun lays them out by default...
    ('block', ['n1:12009', 'n1:12010', 'n1:12011', 'n2:12009', 'n2:12010']),
    # ... or one per node in turn.
    ('cyclic', ['n1:12009', 'n2:12009', 'n1:12010', 'n2:12010', 'n1:12011']),
    ('cyclic:block', ['n1:12009', 'n2:12009', 'n1:12010', 'n2:12010',
                      'n1:12011']),
])
def test_a_slurm_step_is_a_cluster_of_its_ranks(distribution, workers):
  for rank in range(5):
    assert environment.tf_config(_step(
        SLURM_PROCID=str(rank), SLURM_DISTRIBUTION=distribution)) == {
            'cluster': {'worker': workers},
            'task': {'type': 'worker', 'index': rank}}


def test_two_jobs_on_one_node_without_reserved_ports_get_apart_ports():
  first, second = (environment.tf_config(_step(
      SLURM_PROCID='0', SLURM_STEP_RESV_PORTS='', SLURM_JOB_ID=job))
                   for job in ('41', '42'))
  ports = [{int(w.split(':')[1]) for w in config['cluster']['worker']}
           for config in (first, second)]
  assert len(ports[0]) == 3 and not ports[0] & ports[1]


@pytest.mark.parametrize('variables, says', [
    ({'SLURM_STEP_RESV_PORTS': '12009-12010'}, 'resv-ports=3'),
    ({'SLURM_DISTRIBUTION': 'plane=2'}, 'block and cyclic'),
    ({'SLURM_STEP_TASKS_PER_NODE': '5'}, '2 nodes but tasks for 1'),
    ({'SLURM_STEP_NODELIST': 'n[2-1]'}, 'set TF_CONFIG yourself'),
])
def test_a_slurm_step_it_cannot_read_is_one_line(variables, says):
  with pytest.raises(errors.ConfigError, match=says):
    environment.tf_config(_step(SLURM_PROCID='0', **variables))


def test_one_task_and_no_launcher_are_no_cluster():
  assert environment.tf_config(_step(SLURM_PROCID='0',
                                     SLURM_STEP_NUM_TASKS='1')) is None
  assert environment.tf_config({}) is None


def test_tf_config_wins_over_the_step():
  own = {'cluster': {'worker': ['h:1', 'h:2']},
         'task': {'type': 'worker', 'index': 1}}
  assert environment.tf_config(_step(SLURM_PROCID='0',
                                     TF_CONFIG=json.dumps(own))) == own


def _distribution(strategy='auto'):
  return ml_collections.ConfigDict({'strategy': strategy, 'cpu_devices': 0})


@pytest.mark.parametrize('variables', [
    {'TF_CONFIG': json.dumps({'cluster': {'worker': ['h:1', 'h:2']},
                              'task': {'type': 'worker', 'index': 0}})},
    _step(SLURM_PROCID='3'),
    {'MNIST_DIST_WORKER_HOSTS': 'a:1,b:1', 'JOB_COMPLETION_INDEX': '1'},
], ids=['tf_config', 'slurm', 'jobset'])
def test_auto_picks_multi_worker_where_the_environment_has_a_cluster(
    monkeypatch, variables):
  for name in ('TF_CONFIG', 'SLURM_STEP_NUM_TASKS', 'MNIST_DIST_WORKER_HOSTS'):
    monkeypatch.setenv(name, '')  # Restored, or removed, after the test.
  assert strategy_lib.strategy_name(_distribution()) == 'one_device'
  for name, value in variables.items():
    monkeypatch.setenv(name, value)
  assert strategy_lib.strategy_name(_distribution()) == (
      'multi_worker_mirrored')
  # An explicit choice is the user's.
  assert strategy_lib.strategy_name(_distribution('one_device')) == (
      'one_device')


def test_the_trainer_writes_the_steps_cluster_into_tf_config(monkeypatch):
  monkeypatch.setenv('TF_CONFIG', '')  # Restored, or removed, after the test.
  for name, value in _step(SLURM_PROCID='4').items():
    monkeypatch.setenv(name, value)
  monkeypatch.setenv('MNIST_DIST_WORKER_HOSTS', '')
  assert environment.describe_cluster_in_tf_config() == 5
  assert json.loads(environment.os.environ['TF_CONFIG'])['task'] == {
      'type': 'worker', 'index': 4}
