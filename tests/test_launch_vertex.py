"""launch/vertex.sh and its specs (vertex_job.yaml, vertex_hptune.yaml), run
without any cloud (the harness: launch_harness.py)."""

import json
import os
import shutil
import subprocess
import textwrap

import pytest
import yaml

from helpers import ROOT, run_main, slow_after
from launch_harness import LAUNCH, TRICKY_ARG, dry_run_commands

VERTEX = os.path.join(LAUNCH, 'vertex.sh')

VERTEX_ENV = dict(PROJECT='my-proj', BUCKET='gs://my-bucket', RUN_ID='run7',
                  REGION='europe-west4', DATA_DIR='gs://my-bucket/mnist')
STAGING = 'gs://my-bucket/mnist_dist/vertex/run7'
MOUNTED = '/gcs/my-bucket/mnist_dist/vertex/run7'


def vertex_dry_run(env, mode, *args, **variables):
  work_dir = env.tmp / 'vertex'
  process = env.run(VERTEX, [mode, *args], DRY_RUN=1, WORK_DIR=work_dir,
                    **VERTEX_ENV, **variables)
  assert process.returncode == 0, process.stderr
  return dry_run_commands(process.stdout), work_dir


def expected_vertex_commands(work_dir, mode, config='conv_bn.py'):
  sdist = f'{work_dir}/dist/mnist_dist-0.1.0.tar.gz'
  group = 'custom-jobs' if mode == 'job' else 'hp-tuning-jobs'
  spec = 'vertex_job.yaml' if mode == 'job' else 'vertex_hptune.yaml'
  return [
      ['python3', '-m', 'build', '--sdist', '--outdir', f'{work_dir}/dist', ROOT],
      ['gcloud', 'storage', 'cp', sdist, f'{STAGING}/mnist_dist-0.1.0.tar.gz'],
      ['gcloud', 'storage', 'cp', f'{ROOT}/configs/{config}',
       f'{STAGING}/configs/{config}'],
      ['gcloud', 'ai', group, 'create', '--project=my-proj',
       '--region=europe-west4', f'--display-name=mnist-dist-{mode}-run7',
       f'--config={work_dir}/{spec}'],
  ]


def test_vertex_dry_run_submits_the_custom_job(env):
  commands, work_dir = vertex_dry_run(env, 'job', '--config.train.epochs=3',
                                      TRICKY_ARG)
  assert commands == expected_vertex_commands(work_dir, 'job')
  assert env.calls() == []
  spec = yaml.safe_load((work_dir / 'vertex_job.yaml').read_text())
  chief, workers = spec['workerPoolSpecs']
  assert chief['replicaCount'] == 1 and workers['replicaCount'] >= 1
  for pool in (chief, workers):
    assert pool['machineSpec']['acceleratorType'].startswith('NVIDIA_')
    container = pool['containerSpec']
    assert 'vertex-ai/training/tf-gpu.' in container['imageUri']
    assert {e['name']: e['value'] for e in container['env']} == {
        'PACKAGE': f'{MOUNTED}/mnist_dist-0.1.0.tar.gz',
        'WORKDIR': f'{STAGING}/workdir', 'SELFTEST': '1'}
    assert container['args'] == [
        f'--config={MOUNTED}/configs/conv_bn.py',
        '--config.data.dir=gs://my-bucket/mnist',
        '--config.distribution.strategy=multi_worker_mirrored',
        '--config.train.epochs=3', TRICKY_ARG]


def test_vertex_dry_run_submits_the_tuning_job(env):
  commands, work_dir = vertex_dry_run(env, 'hptune', '--config=configs/conv.py')
  assert commands == expected_vertex_commands(work_dir, 'hptune', 'conv.py')
  spec = yaml.safe_load((work_dir / 'vertex_hptune.yaml').read_text())
  (pool,) = spec['trialJobSpec']['workerPoolSpecs']
  container = pool['containerSpec']
  assert container['args'] == [f'--config={MOUNTED}/configs/conv.py',
                               '--config.data.dir=gs://my-bucket/mnist']
  assert {e['name']: e['value'] for e in container['env']} == {
      'PACKAGE': f'{MOUNTED}/mnist_dist-0.1.0.tar.gz',
      'WORKDIR': f'{STAGING}/workdir'}
  assert spec['trialJobSpec']['baseOutputDirectory'] == {
      'outputUriPrefix': f'{STAGING}/hptune'}


def test_vertex_real_run_matches_the_dry_run(env):
  for mode in ('job', 'hptune'):
    dry, work_dir = vertex_dry_run(env, mode, '--config.train.epochs=3',
                                   PYTHON='fakepython')
    dry_spec = (work_dir / os.path.basename(dry[-1][-1])).read_text()
    process = env.run(VERTEX, [mode, '--config.train.epochs=3'],
                      WORK_DIR=work_dir, PYTHON='fakepython', **VERTEX_ENV)
    assert process.returncode == 0, process.stderr
    calls = [c for c in env.calls() if c['argv'][:1] != ['-c']]
    assert [[c['prog'], *c['argv']] for c in calls] == dry
    assert all(c['source_exists'] for c in calls
               if c['argv'][:2] == ['storage', 'cp'])
    assert (work_dir / os.path.basename(dry[-1][-1])).read_text() == dry_spec
    assert 'submitted: follow it with gcloud ai' in process.stderr
    env.log.unlink()


@pytest.mark.parametrize('drop,overrides,args,message', [
    ('PROJECT', {}, ['job'], 'PROJECT is not set'),
    ('BUCKET', {}, ['job'], 'BUCKET is not set'),
    (None, {}, [], 'first argument: job or hptune'),
    (None, {}, ['train'], 'first argument: job or hptune'),
    (None, {'DATA_DIR': '/data/mnist'}, ['job'], 'must be a gs:// folder'),
])
def test_vertex_refuses_a_missing_or_bad_variable(env, drop, overrides, args,
                                                  message):
  variables = {k: v for k, v in VERTEX_ENV.items() if k != drop}
  variables.update(overrides)
  process = env.run(VERTEX, args, DRY_RUN=1, **variables)
  assert process.returncode == 2
  assert process.stderr.startswith('vertex.sh: error: '), process.stderr
  assert message in process.stderr
  assert env.calls() == []


def run_trial_wrapper(env, *hyperparameter_args, **variables):
  """Runs the tuning spec's container command as Vertex AI would."""
  _, work_dir = vertex_dry_run(env, 'hptune')
  spec = yaml.safe_load((work_dir / 'vertex_hptune.yaml').read_text())
  container = spec['trialJobSpec']['workerPoolSpecs'][0]['containerSpec']
  container_env = {e['name']: e['value'] for e in container['env']}
  command = container['command'] + container['args'] + list(hyperparameter_args)
  process = env.run(command[0], command[1:], **container_env, **variables)
  assert process.returncode == 0, process.stderr
  pip, trainer = env.calls('python3')
  assert pip['argv'] == ['-m', 'pip', 'install', '--quiet',
                         f'{MOUNTED}/mnist_dist-0.1.0.tar.gz']
  return trainer['argv']


def test_vertex_trial_wrapper_maps_the_hyperparameters(env):
  argv = run_trial_wrapper(
      env, '--optimizer.learning_rate=0.0123', '--optimizer.decay_rate', '0.7',
      CLOUD_ML_TRIAL_ID=4)
  assert argv == [
      '-m', 'mnist_dist.main', f'--config={MOUNTED}/configs/conv_bn.py',
      '--config.data.dir=gs://my-bucket/mnist',
      '--config.optimizer.learning_rate=0.0123',
      '--config.optimizer.decay_rate', '0.7',
      f'--workdir={STAGING}/workdir/trial_4']


def test_vertex_trial_wrapper_takes_the_trial_from_aip_model_dir(env):
  argv = run_trial_wrapper(env, '--optimizer.learning_rate=0.02',
                           AIP_MODEL_DIR=f'{STAGING}/hptune/7/model/')
  assert argv[-1] == f'--workdir={STAGING}/workdir/trial_7'


def run_job_wrapper(env, *vertex_args, task=None, **variables):
  """Runs a job replica's container command as Vertex AI would, with
  TF_CONFIG naming task ('chief', 0) or ('worker', N)."""
  _, work_dir = vertex_dry_run(env, 'job', *vertex_args)
  spec = yaml.safe_load((work_dir / 'vertex_job.yaml').read_text())
  container = spec['workerPoolSpecs'][0 if task[0] == 'chief' else 1][
      'containerSpec']
  container_env = {e['name']: e['value'] for e in container['env']}
  tf_config = json.dumps({'cluster': {'chief': ['h0:2222'],
                                      'worker': ['h1:2222', 'h2:2222']},
                          'task': {'type': task[0], 'index': task[1]}})
  command = container['command'] + container['args']
  return env.run(command[0], command[1:], **container_env, TF_CONFIG=tf_config,
                 **variables)


JOB_TRAINER_ARGV = [
    '-m', 'mnist_dist.main', f'--config={MOUNTED}/configs/conv_bn.py',
    '--config.data.dir=gs://my-bucket/mnist',
    '--config.distribution.strategy=multi_worker_mirrored',
    f'--workdir={STAGING}/workdir']


@pytest.mark.parametrize('task,out', [
    (('chief', 0), 'selftest.json'), (('worker', 1), 'selftest-worker-1.json')])
def test_vertex_job_replicas_run_the_selftest_then_train(env, task, out):
  process = run_job_wrapper(env, task=task)
  assert process.returncode == 0, process.stderr
  pip, selftest, trainer = env.calls('python3')
  assert pip['argv'] == ['-m', 'pip', 'install', '--quiet',
                         f'{MOUNTED}/mnist_dist-0.1.0.tar.gz']
  assert selftest['argv'] == ['-m', 'mnist_dist.selftest',
                              f'--out={STAGING}/workdir/{out}']
  assert trainer['argv'] == JOB_TRAINER_ARGV


def test_vertex_job_replica_stops_when_the_selftest_fails(env):
  process = run_job_wrapper(env, task=('chief', 0),
                            FAKE_FAIL_PATTERN='mnist_dist.selftest')
  assert process.returncode == 1
  assert [c['argv'][:2] for c in env.calls('python3')] == [
      ['-m', 'pip'], ['-m', 'mnist_dist.selftest']]


def test_vertex_skip_selftest_trains_without_it(env):
  process = run_job_wrapper(env, '--skip_selftest', task=('chief', 0))
  assert process.returncode == 0, process.stderr
  assert [c['argv'] for c in env.calls('python3')][1:] == [JOB_TRAINER_ARGV]
  refused = env.run(VERTEX, ['--skip_selftest', 'hptune'], DRY_RUN=1,
                    **VERTEX_ENV)
  assert refused.returncode == 2
  assert refused.stderr.startswith('vertex.sh: error: --skip_selftest is for '
                                   'job')


@pytest.mark.parametrize('hyperparameters,message', slow_after(1, [
    (['--optimizer.learning_rate=-0.5', '--optimizer.decay_rate', '0.7'],
     'optimizer.learning_rate=-0.5 must be a positive number'),
    (['--optimizer.learning_rate=0.01', '--optimizer.decay_rate', '0.0'],
     'optimizer.decay_rate=0.0 must be a positive number'),
]))
def test_vertex_trial_arguments_reach_the_trainers_config(
    env, tmp_path, hyperparameters, message):
  """The real entry point applies both forms (out-of-range values show it)."""
  argv = run_trial_wrapper(env, *hyperparameters, CLOUD_ML_TRIAL_ID=1)
  local = [f'--config={ROOT}/configs/conv_bn.py' if a.startswith('--config=')
           else f'--workdir={tmp_path}/w' if a.startswith('--workdir=')
           else '--config.data.dir=' if a.startswith('--config.data.dir=')
           else a for a in argv[2:]]
  process = run_main(*local)
  assert process.returncode == 2, process.stderr[-2000:]
  assert f'error: {message}' in process.stderr


def test_vertex_spec_files_parse_and_hold_the_expected_fields():
  with open(os.path.join(LAUNCH, 'vertex_job.yaml')) as f:
    job = yaml.safe_load(f)
  pools = job['workerPoolSpecs']
  assert len(pools) == 2 and pools[0]['replicaCount'] == 1
  for pool in pools:
    assert set(pool) == {'machineSpec', 'replicaCount', 'containerSpec'}
    assert pool['machineSpec']['machineType']
    assert pool['machineSpec']['acceleratorCount'] >= 1
    container = pool['containerSpec']
    assert container['command'][:2] == ['bash', '-c']
    assert {e['name'] for e in container['env']} == {'PACKAGE', 'WORKDIR',
                                                     'SELFTEST'}
    args = container['args']
    assert args[0] == '--config={{CONFIG_PATH}}'
    assert '--config.distribution.strategy=multi_worker_mirrored' in args
    assert args[-1] == '{{EXTRA_ARGS}}'
  assert pools[0] == pools[1] | {'replicaCount': 1}
  # A restarted replica restarts them all, to resume from one checkpoint.
  assert job['scheduling'] == {'restartJobOnWorkerRestart': True}

  with open(os.path.join(LAUNCH, 'vertex_hptune.yaml')) as f:
    tune = yaml.safe_load(f)
  assert 2 <= tune['maxTrialCount'] <= 10
  assert tune['parallelTrialCount'] <= tune['maxTrialCount']
  study = tune['studySpec']
  assert study['metrics'] == [{'metricId': 'eval_accuracy', 'goal': 'MAXIMIZE'}]
  parameters = {p['parameterId']: p for p in study['parameters']}
  assert parameters['optimizer.learning_rate'] == {
      'parameterId': 'optimizer.learning_rate',
      'doubleValueSpec': {'minValue': 0.001, 'maxValue': 0.03},
      'scaleType': 'UNIT_LOG_SCALE'}
  assert parameters['optimizer.decay_rate']['doubleValueSpec'] == {
      'minValue': 0.5, 'maxValue': 0.9}
  (pool,) = tune['trialJobSpec']['workerPoolSpecs']
  assert pool['replicaCount'] == 1
  assert pool['containerSpec']['command'][:2] == ['bash', '-c']
  assert pool['containerSpec']['args'][0] == '--config={{CONFIG_PATH}}'


def _gcloud_sdk():
  gcloud = shutil.which('gcloud')
  if not gcloud:
    return None
  root = os.path.dirname(os.path.dirname(os.path.realpath(gcloud)))
  python = os.path.join(root, 'platform', 'bundledpythonunix', 'bin', 'python')
  lib = os.path.join(root, 'lib')
  if not (os.path.exists(python) and
          os.path.isdir(os.path.join(lib, 'googlecloudsdk', 'command_lib', 'ai'))):
    return None
  return python, lib


GCLOUD_CHECK = textwrap.dedent('''
    import sys
    from googlecloudsdk.core import yaml
    from googlecloudsdk.api_lib.util import messages as messages_util
    from googlecloudsdk.command_lib.ai.custom_jobs import validation
    from googlecloudsdk.generated_clients.apis.aiplatform.v1 import aiplatform_v1_messages as m
    kind, path = sys.argv[1:]
    if kind == 'job':
      spec = messages_util.DictToMessageWithErrorCheck(
          yaml.load_path(path), m.GoogleCloudAiplatformV1CustomJobSpec)
      validation._ValidateWorkerPoolSpecsFromConfig(spec)
    else:
      messages_util.DictToMessageWithErrorCheck(
          yaml.load_path(path), m.GoogleCloudAiplatformV1HyperparameterTuningJob)
    print('ok')
''')


@pytest.mark.skipif(_gcloud_sdk() is None, reason='no local Google Cloud SDK')
def test_vertex_specs_convert_to_gcloud_api_messages(env):
  """gcloud's own YAML-to-API-message conversion, offline: field names,
  types and enum values checked against the aiplatform v1 API."""
  python, lib = _gcloud_sdk()
  check = env.tmp / 'check.py'
  check.write_text(GCLOUD_CHECK)
  for kind, name in (('job', 'vertex_job.yaml'), ('hptune', 'vertex_hptune.yaml')):
    _, work_dir = vertex_dry_run(env, kind, '--config.train.epochs=3')
    for spec, expected in ((work_dir / name, 0), (env.tmp / 'bad.yaml', 1)):
      if expected:  # A misspelt field must fail: the check does check.
        spec.write_text((work_dir / name).read_text().replace(
            'machineType:', 'machine_type:'))
      process = subprocess.run(
          [python, str(check), kind, str(spec)], capture_output=True,
          text=True, timeout=120,
          env={'PATH': '/usr/bin:/bin', 'CLOUDSDK_CONFIG': str(env.tmp / 'cfg'),
               'PYTHONPATH': f'{lib}/third_party:{lib}'})
      assert process.returncode == expected, process.stderr[-2000:]
