"""The harness the launcher tests (tests/test_launch_*.py) share; the `env`
fixture in conftest.py hands each test an Env.

Every script runs twice: in dry-run mode (it prints its commands) and for real
with fake `gcloud` and `python` programs first on PATH, which log their
arguments and exit 0 (or fail on request). The two must agree, command for
command. Nothing here reaches the network.
"""

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys

from helpers import ROOT

LAUNCH = os.path.join(ROOT, 'launch')

# One fake for every program: logs {prog, argv, env, ...} as a JSON line to
# $FAKE_LOG; exits $FAKE_FAIL_CODE (default 1) when an argument contains
# $FAKE_FAIL_PATTERN; sleeps 30 s when one contains $FAKE_SLEEP_PATTERN. As a
# Python, it fakes `-m pip`, `-m build` (writes an empty sdist), `-m
# mnist_dist.main`, `-m mnist_dist.selftest` and the import checks, and hands
# anything else (the scripts' small Python snippets) to the real interpreter.
FAKE = r'''#!{python}
import json, os, sys, tarfile, time
argv = sys.argv[1:]
prog = os.path.basename(sys.argv[0])
record = {{'prog': prog, 'argv': argv, 'cwd': os.getcwd(), 'env': {{
    k: os.environ[k] for k in (
        'CUDA_VISIBLE_DEVICES', 'TPU_LOAD_LIBRARY', 'TPU_NAME',
        'NEXT_PLUGGABLE_DEVICE_USE_C_API', 'TF_PLUGGABLE_DEVICE_LIBRARY_PATH',
        'PACKAGE', 'WORKDIR', 'SELFTEST') if k in os.environ}}}}
if prog == 'gcloud' and 'scp' in argv:
  source = argv[argv.index('scp') + 1]
  if os.path.exists(source):
    with tarfile.open(source) as tar:
      record['tar_members'] = tar.getnames()
if prog == 'gcloud' and argv[:2] == ['storage', 'cp'] and '-r' not in argv:
  record['source_exists'] = os.path.exists(argv[2])
if prog != 'gcloud':
  faked = (argv[:2] in (['-m', 'pip'], ['-m', 'mnist_dist.main'],
                        ['-m', 'mnist_dist.selftest'])
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
    'CLOUD_ML_TRIAL_ID', 'AIP_MODEL_DIR', 'CUDA_VISIBLE_DEVICES', 'PYTHONPATH',
    'TF_CONFIG', 'SELFTEST')


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
                          text=True, timeout=600, env=self.environ(**overrides))

  def calls(self, prog=None):
    if not self.log.exists():
      return []
    records = [json.loads(line) for line in self.log.read_text().splitlines()]
    return [r for r in records if prog is None or r['prog'] == prog]


def dry_run_commands(stdout):
  """The argv of each '+ ' line."""
  lines = [l for l in stdout.splitlines() if l.startswith('+ ')]
  assert lines, stdout
  return [shlex.split(l[2:]) for l in lines]


def option(argv, name):
  """The value of --name=VALUE in argv (exactly one)."""
  (value,) = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  return value
