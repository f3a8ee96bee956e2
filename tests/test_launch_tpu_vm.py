"""launch/tpu_vm.sh and launch/tpu_vm_remote.sh, run without any cloud (the
harness: launch_harness.py)."""

import configparser
import os
import shlex
import signal
import subprocess
import time

import pytest

from helpers import ROOT
from launch_harness import LAUNCH, TRICKY_ARG, dry_run_commands, option

TPU_VM = os.path.join(LAUNCH, 'tpu_vm.sh')
REMOTE = os.path.join(LAUNCH, 'tpu_vm_remote.sh')

TPU_ENV = dict(PROJECT='my-proj', BUCKET='gs://my-bucket/', NAME='mnist-test',
               ZONE='europe-west4-a', ACCELERATOR_TYPE='v5litepod-8',
               RUNTIME_VERSION='tpu-vm-tf-2.18.0-pjrt-v5e-and-v6',
               TF_VERSION='2.18.0')
TPU_WORKDIR = 'gs://my-bucket/mnist_dist/mnist-test'
TPU_TRAINER_ARGS = ['--config.train.epochs=1', TRICKY_ARG]
TPU_FLAGS = ['--project=my-proj', '--zone=europe-west4-a']


def expected_tpu_commands(tmp, out_dir, *, install_fails=False,
                          selftest=True, train=True):
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
  for tag, wanted in (('SELFTEST', selftest), ('TRAIN', train)):
    if wanted:
      gcloud.append(['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mnist-test',
                     *TPU_FLAGS, '--worker=all', tag])
  return gcloud + [
      ['gcloud', 'storage', 'cp', '-r', TPU_WORKDIR, f'{out_dir}/'], delete]


def check_tpu_commands(commands, tmp, out_dir, **kwargs):
  """Compares, with the two --command strings checked separately."""
  expected = expected_tpu_commands(tmp, out_dir, **kwargs)
  install = selftest = train = None
  normalized = []
  for argv in commands:
    argv = list(argv)
    if argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']:
      command = option(argv, 'command')
      argv = [a for a in argv if not a.startswith('--command=')]
      if 'tpu_vm_remote.sh install' in command:
        install, tag = command, 'INSTALL'
      elif 'tpu_vm_remote.sh selftest' in command:
        selftest, tag = command, 'SELFTEST'
      else:
        train, tag = command, 'TRAIN'
      argv.append(tag)
    normalized.append(argv)
  assert normalized == expected
  assert shlex.split(install) == [
      'rm', '-rf', 'mnist_dist', '&&', 'mkdir', 'mnist_dist', '&&', 'tar',
      '-xzf', 'mnist_dist.tar.gz', '-C', 'mnist_dist', '&&', 'cd',
      'mnist_dist', '&&',
      'TF_TPU_PIP=tensorflow-tpu==2.18.0',
      'bash',
      'launch/tpu_vm_remote.sh', 'install']
  if selftest is not None:
    assert shlex.split(selftest) == [
        'cd', 'mnist_dist', '&&', 'bash', 'launch/tpu_vm_remote.sh',
        'selftest', f'--out={TPU_WORKDIR}/selftest.json']
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
  assert len(dry_run_commands(process.stdout)) == 9
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


def test_tpu_vm_stops_before_training_when_the_selftest_fails(env):
  out_dir = env.tmp / 'out'
  process = env.run(TPU_VM, TPU_TRAINER_ARGS, OUT_DIR=out_dir,
                    FAKE_FAIL_PATTERN='tpu_vm_remote.sh selftest', **TPU_ENV)
  assert process.returncode == 1, process.stderr
  commands = [['gcloud', *c['argv']] for c in env.calls('gcloud')]
  # No training; the workdir (with selftest.json) is copied back, then the
  # TPU is deleted.
  check_tpu_commands(commands, env.tmp, out_dir, train=False)
  assert (f'tpu_vm.sh: the self-test failed (exit 1): not training; its table '
          f'is in {TPU_WORKDIR}/selftest.json') in process.stderr
  assert 'the training step failed' not in process.stderr


def test_tpu_vm_skip_selftest_trains_without_it(env):
  out_dir = env.tmp / 'out'
  process = env.run(TPU_VM, ['--skip_selftest', *TPU_TRAINER_ARGS],
                    OUT_DIR=out_dir, **TPU_ENV)
  assert process.returncode == 0, process.stderr
  commands = [['gcloud', *c['argv']] for c in env.calls('gcloud')]
  check_tpu_commands(commands, env.tmp, out_dir, selftest=False)


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
  # SIGINT as a terminal leaves it, even when the suite itself was started
  # in the background (where the shell ignores SIGINT for the whole tree,
  # and a shell cannot trap a signal ignored at its start).
  process = subprocess.Popen(
      [TPU_VM], cwd=ROOT, env=log_env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


@pytest.mark.parametrize('accelerator,image', [
    ('v4-8', 'tpu-ubuntu2204-base'), ('v4-32', 'tpu-ubuntu2204-base'),
    ('v5litepod-8', 'v2-alpha-tpuv5-lite'), ('v5p-8', 'v2-alpha-tpuv5'),
    ('v6e-8', 'v2-alpha-tpuv6e')])
def test_tpu_vm_installs_a_tensorflow_ci_tests_on_a_plain_image(
    env, accelerator, image):
  process = env.run(TPU_VM, [], DRY_RUN=1, PROJECT='p', BUCKET='b',
                    ACCELERATOR_TYPE=accelerator, DATA_DIR='gs://b/mnist')
  assert process.returncode == 0, process.stderr
  commands = dry_run_commands(process.stdout)
  create = [c for c in commands if 'create' in c][0]
  assert f'--version={image}' in create
  install = shlex.split(option([c for c in commands if 'ssh' in c][0],
                               'command'))
  assert 'TF_TPU_PIP=tensorflow-tpu==2.19.1' in install
  # The same TensorFlow release is one CI installs and tests (CPU build).
  with open(os.path.join(ROOT, '.ci', 'run')) as ci:
    assert "'tensorflow==2.19.1'" in ci.read()


def test_tpu_vm_pod_slice_runs_the_trainer_on_worker_0(env):
  process = env.run(TPU_VM, ['--config=configs/conv.py'], DRY_RUN=1,
                    PROJECT='p', BUCKET='b', ACCELERATOR_TYPE='v4-32',
                    DATA_DIR='gs://b/mnist', SPOT=1)
  assert process.returncode == 0, process.stderr
  commands = dry_run_commands(process.stdout)
  create = [c for c in commands if 'create' in c][0]
  assert '--version=tpu-ubuntu2204-base' in create and '--spot' in create
  ssh = [c for c in commands if 'ssh' in c]
  assert [option(c, 'worker') for c in ssh] == ['all', '0', '0']
  selftest = shlex.split(option(ssh[1], 'command'))
  assert selftest == [
      'cd', 'mnist_dist', '&&', 'TPU_POD=1', 'TPU_NAME=mnist-dist-tpu', 'bash',
      'launch/tpu_vm_remote.sh', 'selftest',
      '--out=gs://b/mnist_dist/mnist-dist-tpu/selftest.json',
      '--tpu=mnist-dist-tpu']
  train = shlex.split(option(ssh[2], 'command'))
  assert train[:7] == ['cd', 'mnist_dist', '&&', 'TPU_POD=1',
                       'TPU_NAME=mnist-dist-tpu', 'bash',
                       'launch/tpu_vm_remote.sh']
  assert train[8:] == [
      '--config=configs/conv.py', '--workdir=gs://b/mnist_dist/mnist-dist-tpu',
      '--config.data.dir=gs://b/mnist', '--config.distribution.strategy=tpu',
      '--config.distribution.tpu=mnist-dist-tpu']

# --- launch/tpu_vm_remote.sh (what runs on the VM) ---

def test_tpu_vm_remote_install_keeps_the_tpu_build_of_tensorflow(env):
  pip = 'tensorflow-tpu==2.19.1 --no-cache-dir'
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


@pytest.mark.parametrize('command,module,args', [
    ('train', 'mnist_dist.main',
     ['--config=configs/conv_bn.py', '--config.distribution.strategy=tpu']),
    ('selftest', 'mnist_dist.selftest', ['--out=gs://b/w/selftest.json']),
])
def test_tpu_vm_remote_sets_the_tpu_environment(env, tmp_path, command, module,
                                                args):
  process = env.run('bash', [REMOTE, command, *args], cwd=tmp_path,
                    PYTHON=env.bin / 'fakepython', TPU_POD=1)
  assert process.returncode == 0, process.stderr
  (call,) = env.calls('fakepython')
  assert call['argv'] == ['-m', module, *args]
  assert call['env'].get('TPU_LOAD_LIBRARY') == '0'
  # One host with pip's libtpu: the PJRT plugin variables point at it.
  libtpu = tmp_path / 'site' / 'libtpu'
  libtpu.mkdir(parents=True)
  (libtpu / '__init__.py').write_text('')
  (libtpu / 'libtpu.so').write_text('')
  env.log.unlink()
  process = env.run('bash', [REMOTE, command, *args], cwd=tmp_path,
                    PYTHON=env.bin / 'fakepython',
                    PYTHONPATH=tmp_path / 'site')
  assert process.returncode == 0, process.stderr
  (call,) = env.calls('fakepython')
  assert call['env'].get('TF_PLUGGABLE_DEVICE_LIBRARY_PATH') == str(libtpu / 'libtpu.so')
  assert call['env'].get('NEXT_PLUGGABLE_DEVICE_USE_C_API') == 'true'
  assert 'TPU_LOAD_LIBRARY' not in call['env']
