"""The commands as a user runs them: each sets up TensorFlow as the trainer
does (base/console.py) and so prints none of its C++ start-up lines, while
importing the package, or a command's module as the trainer does, changes no
environment variable."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from helpers import ROOT
from mnist_dist.base import console

# Every console script of setup.cfg, with arguments that import TensorFlow
# and then stop at once, and what it says on stderr then.
_SCRIPTS = {
    'mnist-dist-train': (['--workdir=WORKDIR', '--config.no_such_key=1'],
                         "error: unknown config key 'no_such_key'"),
    'mnist-dist-predict': (['--model=WORKDIR/export', 'seven.png'],
                           'error: --model=WORKDIR/export: '),
    'mnist-dist-plots': (['WORKDIR'], 'error: WORKDIR/config.json: '),
    'mnist-dist-export': (['WORKDIR', '--format=litert'],
                          'error: WORKDIR/config.json: '),
    'mnist-dist-selftest': (['--help'], None),  # Usage on stdout.
}
# What the process's environment must not have for a test to see a change:
# the variables the commands set, and their C++ log level.
_OURS = (*console.TF_ENVIRONMENT, 'TF_CPP_MIN_LOG_LEVEL')


def _environment() -> dict[str, str]:
  """This process's environment without our variables: the user's
  TF_CPP_MIN_LOG_LEVEL would hide the lines looked for, and a variable
  already set the change looked for."""
  return {name: value for name, value in os.environ.items()
          if name not in _OURS}


def test_every_console_script_is_tested():
  with open(os.path.join(ROOT, 'setup.cfg')) as f:
    scripts = re.findall(r'^ +(mnist-dist-[\w-]+) = ', f.read(), re.M)
  assert sorted(scripts) == sorted(_SCRIPTS)


@pytest.mark.parametrize('script', sorted(_SCRIPTS))
def test_a_console_script_prints_no_tensorflow_start_up_line(tmp_path,
                                                             script):
  args, error = _SCRIPTS[script]
  workdir = str(tmp_path / 'run')
  path = os.path.join(os.path.dirname(sys.executable), script)
  process = subprocess.run(
      [path, *(arg.replace('WORKDIR', workdir) for arg in args)],
      cwd=tmp_path, env=_environment(), capture_output=True, text=True,
      timeout=300, check=False)
  lines = process.stderr.splitlines()
  if error is None:
    assert process.returncode == 0 and not lines, process.stderr
  else:
    assert process.returncode != 0
    assert len(lines) == 1, process.stderr  # Its error, and no other line.
    assert lines[0].startswith(error.replace('WORKDIR', workdir)), lines


_ENVIRONMENT_CHANGES = textwrap.dedent("""
    import importlib, json, os, sys
    before = dict(os.environ)
    for module in sys.argv[1:]:
      importlib.import_module(module)
    print(json.dumps(sorted(name for name in {*before, *os.environ}
                            if before.get(name) != os.environ.get(name))))
""")


def _environment_changes(*modules: str) -> list[str]:
  """The environment variables that importing modules, in order, in a fresh
  process changes."""
  process = subprocess.run(
      [sys.executable, '-c', _ENVIRONMENT_CHANGES, *modules], cwd=ROOT,
      env=_environment(), capture_output=True, text=True, timeout=300,
      check=True)
  return json.loads(process.stdout.splitlines()[-1])


@pytest.mark.parametrize('module', ['mnist_dist', 'mnist_dist.config'])
def test_importing_the_package_changes_no_environment_variable(module):
  assert _environment_changes(module) == []


def test_importing_a_command_as_a_library_sets_none_of_ours():
  # As the trainer imports the plots and LiteRT actions, and a test the
  # preprocessing. TensorFlow sets variables of its own as it loads.
  changed = _environment_changes('mnist_dist.outputs.plots',
                                 'mnist_dist.outputs.litert',
                                 'mnist_dist.tools.predict')
  assert not set(changed) & set(_OURS), changed
