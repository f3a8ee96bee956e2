"""The cloud and multi-GPU launchers in launch/, run without any cloud.

Every script runs twice: in dry-run mode (it prints its commands) and for real
with fake `gcloud` and `python` programs first on PATH, which log their
arguments and exit 0 (or fail on request). The two must agree, command for
command. Nothing here reaches the network.
"""

import configparser
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from helpers import run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
TPU_VM = os.path.join(LAUNCH, 'tpu_vm.sh')
VERTEX = os.path.join(LAUNCH, 'vertex.sh')
MULTI_GPU = os.path.join(LAUNCH, 'multi_gpu.sh')
REMOTE = os.path.join(LAUNCH, 'tpu_vm_remote.sh')
TF_TPU_FIND_LINKS = 'https://storage.googleapis.com/libtpu-tf-releases/index.html'

# One fake for every program: logs {prog, argv, env, ...} as a JSON line to
# $FAKE_LOG; exits $FAKE_FAIL_CODE (default 1) when an argument contains
# $FAKE_FAIL_PATTERN; sleeps 30 s when one contains $FAKE_SLEEP_PATTERN. As a
# Python, it fakes `-m pip`, `-m build` (writes an empty sdist), `-m
# mnist_dist.main` and the import checks, and hands anything else (the
# scripts' small Python snippets) to the real interpreter.
FAKE = r'''#!{python}
import json, os, sys, tarfile, time
argv = sys.argv[1:]
prog = os.path.basename(sys.argv[0])
record = {{'prog': prog, 'argv': argv, 'cwd': os.getcwd(), 'env': {{
    k: os.environ[k] for k in (
        'CUDA_VISIBLE_DEVICES', 'TPU_LOAD_LIBRARY', 'TPU_NAME',
        'NEXT_PLUGGABLE_DEVICE_USE_C_API', 'TF_PLUGGABLE_DEVICE_LIBRARY_PATH',
        'PACKAGE', 'WORKDIR') if k in os.environ}}}}
if prog == 'gcloud' and 'scp' in argv:
  source = argv[argv.index('scp') + 1]
  if os.path.exists(source):
    with tarfile.open(source) as tar:
      record['tar_members'] = tar.getnames()
if prog == 'gcloud' and argv[:2] == ['storage', 'cp'] and '-r' not in argv:
  record['source_exists'] = os.path.exists(argv[2])
if prog != 'gcloud':
  faked = (argv[:2] in (['-m', 'pip'], ['-m', 'mnist_dist.main'])
           or argv[:2] == ['-m', 'build']
           or (argv[:1] == ['-c'] and ('import build' in argv[1]
                                       or 'import tensorflow' in argv[1])))
  if not faked:
    os.execv({python!r}, [{python!r}] + argv)
  if argv[:2] == ['-m', 'build']:
    outdir = argv[argv.index('--outdir') + 1]
    os.makedirs(outdir, exist_ok=True)
    open(os.path.join(outdir, 'mnist_dist-0.1.0.tar.gz'), 'wb').close()
with open(os.environ['FAKE_LOG'], 'a') as f:
  f.write(json.dumps(record) + '\n')
sleep = os.environ.get('FAKE_SLEEP_PATTERN')
if sleep and any(sleep in a for a in argv):
  time.sleep(30)
fail = os.environ.get('FAKE_FAIL_PATTERN')
if fail and any(fail in a for a in argv):
  sys.exit(int(os.environ.get('FAKE_FAIL_CODE', '1')))
'''

TRICKY_ARG = '--config.model.name=it\'s "a" $HOME'


# Variables the scripts read: a test sets those it wants, no others leak in.
SCRIPT_VARIABLES = (
    'DRY_RUN', 'PROJECT', 'BUCKET', 'NAME', 'ZONE', 'ACCELERATOR_TYPE',
    'TF_VERSION', 'RUNTIME_VERSION', 'TF_TPU_PIP', 'POD', 'WORKDIR', 'DATA_DIR',
    'OUT_DIR', 'KEEP_VM', 'SPOT', 'TRAIN_WORKER', 'TRAIN_ENV', 'CONFIG',
    'GPUS', 'PYTHON', 'REGION', 'RUN_ID', 'DISPLAY_NAME', 'JOB_SPEC',
    'HPTUNE_SPEC', 'WORK_DIR', 'TPU_POD', 'TPU_NAME', 'TPU_LOAD_LIBRARY',
    'TF_PLUGGABLE_DEVICE_LIBRARY_PATH', 'NEXT_PLUGGABLE_DEVICE_USE_C_API',
    'CLOUD_ML_TRIAL_ID', 'AIP_MODEL_DIR', 'CUDA_VISIBLE_DEVICES', 'PYTHONPATH')


class Env:
  """A tmp_path with the fakes on PATH, and runners for the scripts."""

  def __init__(self, tmp_path):
    self.tmp = tmp_path
    self.bin = tmp_path / 'bin'
    self.bin.mkdir()
    self.log = tmp_path / 'calls.jsonl'
    for name in ('gcloud', 'gsutil', 'python3', 'fakepython'):
      path = self.bin / name
      path.write_text(FAKE.format(python=sys.executable))
      path.chmod(path.stat().st_mode | stat.S_IXUSR)
    self.path = f'{self.bin}{os.pathsep}{os.environ["PATH"]}'
    assert shutil.which('gcloud', path=self.path) == str(self.bin / 'gcloud')

  def environ(self, **overrides):
    env = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARIABLES}
    env.update(PATH=self.path, TMPDIR=str(self.tmp), FAKE_LOG=str(self.log),
               CLOUDSDK_CONFIG=str(self.tmp / 'gcloud-config'))
    env.update({k: str(v) for k, v in overrides.items()})
    return env

  def run(self, command, args=(), cwd=ROOT, **overrides):
    return subprocess.run([command, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=self.environ(**overrides))

  def calls(self, prog=None):
    if not self.log.exists():
      return []
    records = [json.loads(line) for line in self.log.read_text().splitlines()]
    return [r for r in records if prog is None or r['prog'] == prog]


@pytest.fixture
def env(tmp_path):
  return Env(tmp_path)


def dry_run_commands(stdout):
  """The argv of each '+ ' line."""
  lines = [l for l in stdout.splitlines() if l.startswith('+ ')]
  assert lines, stdout
  return [shlex.split(l[2:]) for l in lines]


def option(argv, name):
  """The value of --name=VALUE in argv (exactly one)."""
  (value,) = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  return value


# --- launch/tpu_vm.sh ---

TPU_ENV = dict(PROJECT='my-proj', BUCKET='gs://my-bucket/', NAME='mnist-test',
               ZONE='europe-west4-a', ACCELERATOR_TYPE='v5litepod-8',
               RUNTIME_VERSION='tpu-vm-tf-2.18.0-pjrt-v5e-and-v6',
               TF_VERSION='2.18.0')
TPU_WORKDIR = 'gs://my-bucket/mnist_dist/mnist-test'
TPU_TRAINER_ARGS = ['--config.train.epochs=1', TRICKY_ARG]
TPU_FLAGS = ['--project=my-proj', '--zone=europe-west4-a']


def expected_tpu_commands(tmp, out_dir, *, train_status=0, install_fails=False):
  tarball = str(tmp / 'mnist_dist-mnist-test.tar.gz')
  gcloud = [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'mnist-test',
       *TPU_FLAGS, '--accelerator-type=v5litepod-8',
       '--version=tpu-vm-tf-2.18.0-pjrt-v5e-and-v6'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', tarball,
       'mnist-test:mnist_dist.tar.gz', *TPU_FLAGS, '--worker=all'],
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mnist-test',
       *TPU_FLAGS, '--worker=all', 'INSTALL'],
  ]
  delete = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'mnist-test',
            *TPU_FLAGS, '--quiet']
  if install_fails:
    return gcloud + [delete]
  gcloud.append(['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mnist-test',
                 *TPU_FLAGS, '--worker=all', 'TRAIN'])
  return gcloud + [
      ['gcloud', 'storage', 'cp', '-r', TPU_WORKDIR, f'{out_dir}/'], delete]


def check_tpu_commands(commands, tmp, out_dir, **kwargs):
  """Compares, with the two --command strings checked separately."""
  expected = expected_tpu_commands(tmp, out_dir, **kwargs)
  install = train = None
  normalized = []
  for argv in commands:
    argv = list(argv)
    if argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']:
      command = option(argv, 'command')
      argv = [a for a in argv if not a.startswith('--command=')]
      if 'tpu_vm_remote.sh install' in command:
        install, tag = command, 'INSTALL'
      else:
        train, tag = command, 'TRAIN'
      argv.append(tag)
    normalized.append(argv)
  assert normalized == expected
  assert shlex.split(install) == [
      'rm', '-rf', 'mnist_dist', '&&', 'mkdir', 'mnist_dist', '&&', 'tar',
      '-xzf', 'mnist_dist.tar.gz', '-C', 'mnist_dist', '&&', 'cd',
      'mnist_dist', '&&',
      f'TF_TPU_PIP=tensorflow-tpu==2.18.0 -f {TF_TPU_FIND_LINKS} --force-reinstall',
      'bash',
      'launch/tpu_vm_remote.sh', 'install']
  if train is not None:
    assert shlex.split(train) == [
        'cd', 'mnist_dist', '&&', 'bash', 'launch/tpu_vm_remote.sh', 'train',
        '--config=configs/conv_bn.py', f'--workdir={TPU_WORKDIR}',
        '--config.distribution.strategy=tpu', *TPU_TRAINER_ARGS]


def test_tpu_vm_dry_run_prints_every_command(env):
  out_dir = env.tmp / 'out'
  process = env.run(TPU_VM, ['--dry-run', *TPU_TRAINER_ARGS],
                    OUT_DIR=out_dir, **TPU_ENV)
  assert process.returncode == 0, process.stderr
  commands = dry_run_commands(process.stdout)
  assert commands[0][:3] == ['tar', '-czf', str(env.tmp / 'mnist_dist-mnist-test.tar.gz')]
  assert commands[0][-3:] == ['-C', ROOT, '.']
  assert commands[-3] == ['mkdir', '-p', str(out_dir)]
  check_tpu_commands(commands[1:-3] + commands[-2:], env.tmp, out_dir)
  assert env.calls() == []  # Nothing ran.
  assert not out_dir.exists()
  assert 'dry run: nothing was run' in process.stderr


def test_tpu_vm_dry_run_from_the_environment_variable(env):
  process = env.run(TPU_VM, TPU_TRAINER_ARGS, DRY_RUN=1,
                    OUT_DIR=env.tmp / 'out', **TPU_ENV)
  assert process.returncode == 0, process.stderr
  assert len(dry_run_commands(process.stdout)) == 8
  assert env.calls() == []


def test_tpu_vm_real_run_matches_the_dry_run(env):
  out_dir = env.tmp / 'out'
  dry = env.run(TPU_VM, TPU_TRAINER_ARGS, DRY_RUN=1, OUT_DIR=out_dir, **TPU_ENV)
  process = env.run(TPU_VM, TPU_TRAINER_ARGS, OUT_DIR=out_dir, **TPU_ENV)
  assert process.returncode == 0, process.stderr
  calls = env.calls('gcloud')
  commands = [['gcloud', *c['argv']] for c in calls]
  check_tpu_commands(commands, env.tmp, out_dir)
  assert commands == [c for c in dry_run_commands(dry.stdout) if c[0] == 'gcloud']
  # Real mode echoes the same lines on stderr.
  assert dry_run_commands(process.stderr) == dry_run_commands(dry.stdout)
  # What was copied: the repo's working tree, without .git or caches.
  members = {m[2:] if m.startswith('./') else m
             for m in calls[1]['tar_members']}
  assert {'mnist_dist/main.py', 'configs/conv_bn.py', 'setup.cfg',
          'launch/tpu_vm_remote.sh'} <= members
  assert not [m for m in members if m == '.git' or m.startswith('.git/')
              or '__pycache__' in m or '.egg-info' in m]
  assert out_dir.is_dir()
  assert not (env.tmp / 'mnist_dist-mnist-test.tar.gz').exists()  # Cleaned up.


@pytest.mark.parametrize('code', [1, 75])
def test_tpu_vm_deletes_the_vm_when_training_fails(env, code):
  out_dir = env.tmp / 'out'
  process = env.run(TPU_VM, TPU_TRAINER_ARGS, OUT_DIR=out_dir,
                    FAKE_FAIL_PATTERN='tpu_vm_remote.sh train',
                    FAKE_FAIL_CODE=code, **TPU_ENV)
  assert process.returncode == code, process.stderr
  commands = [['gcloud', *c['argv']] for c in env.calls('gcloud')]
  # Still copies back what the workdir holds, then deletes.
  check_tpu_commands(commands, env.tmp, out_dir)
  if code == 75:
    assert 'run the same command again to resume' in process.stderr
  else:
    assert 'the training step failed (exit 1)' in process.stderr


def test_tpu_vm_deletes_the_vm_when_the_install_fails(env):
  process = env.run(TPU_VM, TPU_TRAINER_ARGS, OUT_DIR=env.tmp / 'out',
                    FAKE_FAIL_PATTERN='tpu_vm_remote.sh install', **TPU_ENV)
  assert process.returncode == 1
  commands = [['gcloud', *c['argv']] for c in env.calls('gcloud')]
  check_tpu_commands(commands, env.tmp, env.tmp / 'out', install_fails=True)


def test_tpu_vm_create_failure_deletes_nothing(env):
  """E.g. the name is taken: that TPU may be someone else's."""
  process = env.run(TPU_VM, [], OUT_DIR=env.tmp / 'out',
                    FAKE_FAIL_PATTERN='create', FAKE_FAIL_CODE=3, **TPU_ENV)
  assert process.returncode == 3
  (call,) = env.calls('gcloud')
  assert call['argv'][:4] == ['compute', 'tpus', 'tpu-vm', 'create']
  assert 'the create failed: nothing deleted' in process.stderr


@pytest.mark.parametrize('step', ['create', 'tpu_vm_remote.sh train'])
def test_tpu_vm_deletes_the_vm_on_ctrl_c(env, step):
  """SIGINT to the whole process group, as a terminal's Ctrl-C sends it,
  while the TPU is being created (the creation goes on) or trains."""
  log_env = env.environ(OUT_DIR=env.tmp / 'out', FAKE_SLEEP_PATTERN=step,
                        **TPU_ENV)
  process = subprocess.Popen([TPU_VM], cwd=ROOT, env=log_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
  deadline = time.monotonic() + 60
  while not any(step in ' '.join(c['argv']) for c in env.calls('gcloud')):
    assert time.monotonic() < deadline and process.poll() is None
    time.sleep(0.05)
  os.killpg(process.pid, signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 130, stderr
  last = env.calls('gcloud')[-1]['argv']
  assert last[:5] == ['compute', 'tpus', 'tpu-vm', 'delete', 'mnist-test']


def test_tpu_vm_keep_vm_leaves_it_running(env):
  process = env.run(TPU_VM, [], OUT_DIR=env.tmp / 'out', KEEP_VM=1, **TPU_ENV)
  assert process.returncode == 0, process.stderr
  assert not [c for c in env.calls('gcloud') if 'delete' in c['argv']]
  assert 'KEEP_VM=1: mnist-test is left running' in process.stderr
  assert 'gcloud compute tpus tpu-vm delete mnist-test' in process.stderr


def test_tpu_vm_reports_a_failed_delete(env):
  process = env.run(TPU_VM, [], OUT_DIR=env.tmp / 'out',
                    FAKE_FAIL_PATTERN='delete', **TPU_ENV)
  assert process.returncode == 1
  assert 'could not delete the TPU mnist-test' in process.stderr


@pytest.mark.parametrize('drop,overrides,message', [
    ('PROJECT', {}, 'PROJECT is not set'),
    ('BUCKET', {}, 'BUCKET is not set'),
    (None, {'WORKDIR': '/tmp/local'}, 'must be a gs:// path'),
    (None, {'NAME': 'Bad_Name'}, 'NAME=Bad_Name'),
    (None, {'ACCELERATOR_TYPE': 'tpu8'}, 'ACCELERATOR_TYPE=tpu8'),
    (None, {'CONFIG': 'configs/nope.py'}, 'no config file'),
    (None, {'ACCELERATOR_TYPE': 'v4-32'}, 'must be a gs:// folder'),
])
def test_tpu_vm_refuses_a_missing_or_bad_variable(env, drop, overrides, message):
  variables = {k: v for k, v in TPU_ENV.items() if k != drop}
  variables.update(overrides)
  for dry in (0, 1):
    process = env.run(TPU_VM, [], DRY_RUN=dry, **variables)
    assert process.returncode == 2
    assert process.stderr.startswith('tpu_vm.sh: error: '), process.stderr
    assert message in process.stderr
    assert process.stdout == ''
  assert env.calls() == []


def test_tpu_vm_pod_slice_runs_the_trainer_on_worker_0(env):
  process = env.run(TPU_VM, ['--config=configs/conv.py'], DRY_RUN=1,
                    PROJECT='p', BUCKET='b', ACCELERATOR_TYPE='v4-32',
                    DATA_DIR='gs://b/mnist', SPOT=1)
  assert process.returncode == 0, process.stderr
  commands = dry_run_commands(process.stdout)
  create = [c for c in commands if 'create' in c][0]
  assert '--version=tpu-vm-tf-2.17.0-pod-pjrt' in create and '--spot' in create
  ssh = [c for c in commands if 'ssh' in c]
  assert [option(c, 'worker') for c in ssh] == ['all', '0']
  train = shlex.split(option(ssh[1], 'command'))
  assert train[:7] == ['cd', 'mnist_dist', '&&', 'TPU_POD=1',
                       'TPU_NAME=mnist-dist-tpu', 'bash',
                       'launch/tpu_vm_remote.sh']
  assert train[8:] == [
      '--config=configs/conv.py', '--workdir=gs://b/mnist_dist/mnist-dist-tpu',
      '--config.data.dir=gs://b/mnist', '--config.distribution.strategy=tpu',
      '--config.distribution.tpu=mnist-dist-tpu']


# --- launch/tpu_vm_remote.sh (what runs on the VM) ---

def test_tpu_vm_remote_install_keeps_the_tpu_build_of_tensorflow(env):
  pip = f'tensorflow-tpu==2.17.0 -f {TF_TPU_FIND_LINKS} --force-reinstall'
  process = env.run('bash', [REMOTE, 'install'], cwd=env.tmp,
                    PYTHON=env.bin / 'fakepython', TF_TPU_PIP=pip)
  assert process.returncode == 0, process.stderr
  calls = [c['argv'] for c in env.calls('fakepython')]
  assert calls[0] == ['-m', 'pip', 'install', *pip.split()]
  assert calls[1] == ['-m', 'pip', 'install', '--no-deps', '-e', '.']
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, 'setup.cfg'))
  declared = [line.strip() for line in
              config['options']['install_requires'].splitlines() if line.strip()]
  assert [r for r in declared if r.startswith('tensorflow>')]  # Still there.
  assert calls[2] == ['-m', 'pip', 'install', *[
      r for r in declared if not r.startswith(('tensorflow>', 'tensorflow='))]]
  assert all(c['cwd'] == ROOT for c in env.calls('fakepython'))


def test_tpu_vm_remote_train_sets_the_tpu_environment(env, tmp_path):
  args = ['--config=configs/conv_bn.py', '--config.distribution.strategy=tpu']
  process = env.run('bash', [REMOTE, 'train', *args], cwd=tmp_path,
                    PYTHON=env.bin / 'fakepython', TPU_POD=1)
  assert process.returncode == 0, process.stderr
  (call,) = env.calls('fakepython')
  assert call['argv'] == ['-m', 'mnist_dist.main', *args]
  assert call['env'].get('TPU_LOAD_LIBRARY') == '0'
  # One host with pip's libtpu: the PJRT plugin variables point at it.
  libtpu = tmp_path / 'site' / 'libtpu'
  libtpu.mkdir(parents=True)
  (libtpu / '__init__.py').write_text('')
  (libtpu / 'libtpu.so').write_text('')
  env.log.unlink()
  process = env.run('bash', [REMOTE, 'train', *args], cwd=tmp_path,
                    PYTHON=env.bin / 'fakepython',
                    PYTHONPATH=tmp_path / 'site')
  assert process.returncode == 0, process.stderr
  (call,) = env.calls('fakepython')
  assert call['env'].get('TF_PLUGGABLE_DEVICE_LIBRARY_PATH') == str(libtpu / 'libtpu.so')
  assert call['env'].get('NEXT_PLUGGABLE_DEVICE_USE_C_API') == 'true'
  assert 'TPU_LOAD_LIBRARY' not in call['env']


# --- launch/multi_gpu.sh ---

def test_multi_gpu_dry_run_shows_the_gpus_and_mirrored(env):
  args = ['--workdir=/tmp/run1', '--config.train.precision=mixed_float16',
          '--config=configs/conv.py']
  process = env.run(MULTI_GPU, args, DRY_RUN=1, GPUS='0,1')
  assert process.returncode == 0, process.stderr
  assert dry_run_commands(process.stdout) == [[
      'env', 'CUDA_VISIBLE_DEVICES=0,1', 'python3', '-m', 'mnist_dist.main',
      '--config=configs/conv.py', '--config.distribution.strategy=mirrored',
      '--workdir=/tmp/run1', '--config.train.precision=mixed_float16']]
  assert env.calls() == []


def test_multi_gpu_runs_the_trainer_with_the_gpus(env):
  process = env.run(MULTI_GPU, ['--workdir=/tmp/run1', TRICKY_ARG], GPUS='1,3',
                    PYTHON=env.bin / 'fakepython')
  assert process.returncode == 0, process.stderr
  (call,) = env.calls('fakepython')
  assert call['env']['CUDA_VISIBLE_DEVICES'] == '1,3'
  assert call['argv'] == [
      '-m', 'mnist_dist.main', f'--config={ROOT}/configs/conv_bn.py',
      '--config.distribution.strategy=mirrored', '--workdir=/tmp/run1',
      TRICKY_ARG]


def test_multi_gpu_passes_the_trainers_exit_code(env):
  process = env.run(MULTI_GPU, ['--workdir=/tmp/run1'],
                    PYTHON=env.bin / 'fakepython',
                    FAKE_FAIL_PATTERN='mnist_dist.main', FAKE_FAIL_CODE=75)
  assert process.returncode == 75
  assert 'CUDA_VISIBLE_DEVICES' not in env.calls('fakepython')[0]['env']


def test_multi_gpu_refuses_bad_gpus(env):
  process = env.run(MULTI_GPU, ['--workdir=/tmp/x'], GPUS='first,second')
  assert process.returncode == 2
  assert 'multi_gpu.sh: error: GPUS=first,second' in process.stderr


def test_multi_gpu_command_is_accepted_by_the_trainer(env, tmp_path):
  """The real entry point parses the flags in the order the script gives."""
  process = env.run(MULTI_GPU, [f'--workdir={tmp_path}/w',
                                '--config.train.precision=mixed_float17'],
                    PYTHON=sys.executable)
  assert process.returncode == 2, process.stderr[-2000:]
  assert "train.precision='mixed_float17' is not one of" in process.stderr


# --- launch/vertex.sh and its specs ---

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
    package = pool['pythonPackageSpec']
    assert package['packageUris'] == [f'{STAGING}/mnist_dist-0.1.0.tar.gz']
    assert package['pythonModule'] == 'mnist_dist.main'
    assert 'vertex-ai/training/tf-' in package['executorImageUri']
    assert package['args'] == [
        f'--config={MOUNTED}/configs/conv_bn.py', f'--workdir={STAGING}/workdir',
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


@pytest.mark.parametrize('hyperparameters,message', [
    (['--optimizer.learning_rate=-0.5', '--optimizer.decay_rate', '0.7'],
     'optimizer.learning_rate=-0.5 must be a positive number'),
    (['--optimizer.learning_rate=0.01', '--optimizer.decay_rate', '0.0'],
     'optimizer.decay_rate=0.0 must be a positive number'),
])
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
    assert set(pool) == {'machineSpec', 'replicaCount', 'pythonPackageSpec'}
    assert pool['machineSpec']['machineType']
    assert pool['machineSpec']['acceleratorCount'] >= 1
    args = pool['pythonPackageSpec']['args']
    assert args[0] == '--config={{CONFIG_PATH}}'
    assert '--workdir={{WORKDIR}}' in args
    assert '--config.distribution.strategy=multi_worker_mirrored' in args
    assert args[-1] == '{{EXTRA_ARGS}}'
  assert pools[0] == pools[1] | {'replicaCount': 1}

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
