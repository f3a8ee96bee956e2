"""launch/kubernetes.py's JobSet: its structure, and each pod's command run
on this machine with the environment Kubernetes gives the pod, the pods'
names mapped to loopback, forming a real cluster that trains. No Kubernetes
cluster is reachable here: what the API server and JobSet's controller do
with the manifest has not run."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from helpers import launch_script
from helpers import ROOT
from mnist_dist.distribution import environment

local_cluster = launch_script('local_cluster')

_TRAINER_FLAGS = ['--config=dense', '--config.data.source=synthetic',
                  '--config.data.synthetic_train_examples=2048',
                  '--config.data.synthetic_eval_examples=500',
                  '--config.train.epochs=1', '--config.train.steps_per_loop=8',
                  '--config.outputs.tensorboard=False',
                  '--config.outputs.plots=False']


def _render(*flags) -> dict:
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'kubernetes.py'), *flags],
      capture_output=True, text=True, check=False)
  assert process.returncode == 0, process.stderr
  return yaml.safe_load(process.stdout)


def _job(manifest: dict) -> dict:
  (replicated,) = manifest['spec']['replicatedJobs']
  return replicated['template']['spec']


def test_the_jobset_runs_one_indexed_pod_per_worker_with_its_names():
  manifest = _render('--name=mnist', '--workers=4', '--image=img:1',
                     '--workdir=gs://b/run', '--', '--config=fast')
  assert (manifest['apiVersion'], manifest['kind']) == (
      'jobset.x-k8s.io/v1alpha2', 'JobSet')
  assert manifest['spec']['network'] == {'enableDNSHostnames': True,
                                         'subdomain': 'mnist'}
  job = _job(manifest)
  assert (job['parallelism'], job['completions'], job['completionMode']) == (
      4, 4, 'Indexed')
  (container,) = job['template']['spec']['containers']
  assert container['command'] == ['mnist-dist-train', '--workdir=gs://b/run',
                                  '--config=fast']
  env = {item['name']: item['value'] for item in container['env']}
  # The pods' names under JobSet's headless service, in index order.
  assert env['MNIST_DIST_WORKER_HOSTS'].split(',') == [
      f'mnist-worker-0-{i}.mnist:2222' for i in range(4)]


def test_exit_2_and_3_fail_the_set_and_the_rest_restart_it():
  manifest = _render('--workers=2', '--image=img', '--workdir=gs://b/run',
                     '--max_restarts=7')
  policy = manifest['spec']['failurePolicy']
  job = _job(manifest)
  # A pod that exits 2 or 3 fails its Job by the pod failure policy...
  (rule,) = job['podFailurePolicy']['rules']
  assert rule['action'] == 'FailJob'
  assert rule['onExitCodes']['operator'] == 'In'
  assert sorted(rule['onExitCodes']['values']) == [2, 3]
  # ... which fails the set; any other failure (75, 76, a kill) fails the
  # Job by its backoff limit of 0, which the set restarts, 7 times at most.
  assert policy['rules'] == [{'action': 'FailJobSet',
                              'onJobFailureReasons': ['PodFailurePolicy']}]
  assert job['backoffLimit'] == 0 and policy['maxRestarts'] == 7
  assert job['template']['spec']['restartPolicy'] == 'Never'


def test_a_volume_claim_holds_the_workdir():
  manifest = _render('--workers=2', '--image=img', '--workdir=/workdir/run',
                     '--volume_claim=shared', '--gpus=2')
  pod = _job(manifest)['template']['spec']
  assert pod['volumes'] == [{'name': 'workdir',
                             'persistentVolumeClaim': {'claimName': 'shared'}}]
  (container,) = pod['containers']
  assert container['volumeMounts'] == [{'name': 'workdir',
                                        'mountPath': '/workdir'}]
  assert container['resources'] == {'limits': {'nvidia.com/gpu': 2}}


@pytest.mark.parametrize('flags, says', [
    (['--workers=2', '--workdir=gs://b/r'], '--image must be given'),
    (['--name=Mnist_1', '--image=i', '--workdir=gs://b/r'], 'DNS label'),
])
def test_bad_flags_are_one_line(flags, says):
  process = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch', 'kubernetes.py'), *flags],
      capture_output=True, text=True, check=False)
  assert process.returncode == 2
  assert process.stderr.count('\n') == 1 and says in process.stderr


@pytest.mark.parametrize('index, expected', [('0', 0), ('2', 2)])
def test_a_pod_reads_its_tf_config_from_its_index(index, expected):
  hosts = 'a-worker-0-0.a:2222,a-worker-0-1.a:2222,a-worker-0-2.a:2222'
  assert environment.tf_config({'MNIST_DIST_WORKER_HOSTS': hosts,
                                'JOB_COMPLETION_INDEX': index}) == {
      'cluster': {'worker': hosts.split(',')},
      'task': {'type': 'worker', 'index': expected}}


@pytest.mark.slow  # Two trainers.
def test_the_pods_commands_form_a_cluster_that_trains(tmp_path):
  manifest = _render('--name=mnist', '--workers=2', '--image=img',
                     f'--workdir={tmp_path / "run"}', '--', *_TRAINER_FLAGS)
  (container,) = _job(manifest)['template']['spec']['containers']
  env = {item['name']: item['value'] for item in container['env']}
  # Each pod's name on a loopback port of its own: the pods share this
  # machine's network, where Kubernetes gives each an address.
  ports = local_cluster.free_ports(2)
  loopback = {host: f'127.0.0.1:{port}' for host, port in zip(
      env['MNIST_DIST_WORKER_HOSTS'].split(','), ports)}
  env['MNIST_DIST_WORKER_HOSTS'] = ','.join(loopback.values())
  command = [os.path.join(os.path.dirname(sys.executable),
                          container['command'][0]), *container['command'][1:]]
  pods = [subprocess.Popen(
      command, env={**os.environ, **env, 'JOB_COMPLETION_INDEX': str(index)},
      cwd=tmp_path, stderr=subprocess.PIPE, text=True) for index in range(2)]
  outputs = [pod.communicate(timeout=600)[1] for pod in pods]
  assert [pod.returncode for pod in pods] == [0, 0], outputs[0][-3000:]
  assert re.search('(MultiWorkerMirrored|CollectiveAllReduce)Strategy with 2 '
                   'replicas', outputs[0])
  assert 'eval epoch 1:' in outputs[0] and 'eval epoch' not in outputs[1]
  assert (tmp_path / 'run' / 'export').is_dir()
