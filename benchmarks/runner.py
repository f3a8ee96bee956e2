"""What the benchmarks share: their common flag, runs of the trainer and of the
codelab recipe in fresh processes, and the Markdown tables and JSON they write.

Every run is a process of its own, started from the repository's root as a
user would start it, so that each pays its own start-up and none inherits
another's TensorFlow state.
"""

import dataclasses
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from absl import flags
import tensorflow as tf

from mnist_dist.base import workdir as workdir_lib
from mnist_dist.distribution import hardware
from mnist_dist.outputs import metrics_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The codelab's ladder of models, from a 1-layer softmax net to conv + batch
# norm: one config of configs/ each.
LADDER = ('dense_softmax', 'dense', 'dense_dropout', 'conv', 'conv_bn')

DATA_DIR = flags.DEFINE_string('data_dir', '../shared/mnist',
                               'Folder with the four MNIST IDX files.')


def define_trainer_flags() -> flags.FlagHolder:
  """--trainer_flags, for a benchmark that runs the trainer."""
  return flags.DEFINE_list(
      'trainer_flags', [], 'Extra --config.x=y flags for this trainer, to '
      'measure a lever (e.g. --trainer_flags=--config.train.precision=float32).')


def config_path(name: str) -> str:
  """configs/NAME.py, as a path that works from any folder; a value with a /
  or ending in .py (as the trainer's --config takes) is a file's path."""
  if os.sep in name or name.endswith('.py'):
    return os.path.abspath(name)
  return os.path.join(ROOT, 'configs', name + '.py')


@dataclasses.dataclass(frozen=True)
class Process:
  """One finished run of `python ARGS`."""
  start: float  # Unix time at the launch.
  wall_s: float  # From the launch to the end of the process.
  log: str  # Its stderr ('' when it went to the terminal).


def run_python(*args: str, show_log: bool = False,
               env: dict[str, str] | None = None) -> Process:
  """Runs `python ARGS` from the repository's root; raises if it fails.

  show_log: let its log go to the terminal as it runs, instead of keeping it.
  env: environment variables to set for it, over this process's.
  """
  start = time.time()
  process = subprocess.run([sys.executable, *args], cwd=ROOT, text=True,
                           env={**os.environ, **(env or {})},
                           stdout=None if show_log else subprocess.DEVNULL,
                           stderr=None if show_log else subprocess.PIPE,
                           check=False)
  wall_s = time.time() - start
  if process.returncode:
    raise RuntimeError(f'python {" ".join(args)} failed (exit code '
                       f'{process.returncode}):\n'
                       f'{(process.stderr or "")[-3000:]}')
  return Process(start=start, wall_s=wall_s, log=process.stderr or '')


def run_trainer(config: str, workdir: str, *config_flags: str,
                show_log: bool = False, env: dict[str, str] | None = None
                ) -> tuple[Process, list[dict]]:
  """`python -m mnist_dist.main` for configs/CONFIG.py in a new WORKDIR.

  config_flags: --config.a.b=value overrides, after --config.data.dir=
  --data_dir. env: as for run_python. Returns the process and its
  metrics.jsonl records.
  """
  shutil.rmtree(workdir, ignore_errors=True)  # A new run, not a resumed one.
  process = run_python('-m', 'mnist_dist.main', f'--config={config_path(config)}',
                       f'--workdir={workdir}',
                       f'--config.data.dir={DATA_DIR.value}', *config_flags,
                       show_log=show_log, env=env)
  return process, metrics_file.read_metrics(workdir)


def run_codelab_fit(config: str, out_file: str,
                    *fit_flags: str) -> tuple[Process, list[dict]]:
  """benchmarks/codelab_fit.py for configs/CONFIG.py, writing OUT_FILE anew.

  fit_flags: its flags and --config.a.b=value overrides, after --data_dir.
  Returns the process and its records, one per epoch. It runs with
  TensorFlow's default CPU allocator, as the codelab does, where the
  benchmarks' environment (benchmarks/__init__.py) would give it the
  trainer's. It keeps the trainer's kernels (oneDNN's, where TensorFlow
  would pick Eigen's): the comparison is of the loops on the same kernels,
  and the kernels' own lever is a --variant.
  """
  if os.path.exists(out_file):
    os.remove(out_file)
  process = run_python('-m', 'benchmarks.codelab_fit',
                       f'--config={config_path(config)}',
                       f'--data_dir={DATA_DIR.value}', f'--out={out_file}',
                       *fit_flags,
                       env={'TF_CPU_ALLOCATOR_USE_BFC': 'false'})
  with open(out_file) as f:
    return process, [json.loads(line) for line in f]


def loop_end_times(workdir: str) -> list[float]:
  """Unix times at which the run's training loops ended, oldest first.

  Read from its TensorBoard training events, which the trainer writes after
  every loop, to the microsecond (its log lines carry whole seconds only);
  [] with outputs.tensorboard off.
  """
  pattern = os.path.join(workdir_lib.path(workdir, workdir_lib.TENSORBOARD),
                         'train', 'events.*')
  times = {}
  for path in glob.glob(pattern):
    for event in tf.compat.v1.train.summary_iterator(path):
      if event.step > 0:  # Step 0 holds the config, written at set-up.
        times.setdefault(event.step, event.wall_time)
  return [times[step] for step in sorted(times)]


def machine() -> dict:
  """What the numbers were measured on: the same VM can land on another CPU
  from one day to the next."""
  model, bf16_features = hardware.cpu()
  return {'cpus': os.cpu_count(), 'processor': model,
          'bf16_features': bf16_features,
          'python': platform.python_version()}


def describe_machine() -> str:
  """One line: CPUs, model and bfloat16 features."""
  info = machine()
  return (f'{info["cpus"]} CPUs ({info["processor"]}; bfloat16: '
          f'{", ".join(info["bf16_features"]) or "none"})')


def print_row(*cells) -> None:
  """One row of a Markdown table, printed at once (runs take a while)."""
  print('| ' + ' | '.join(map(str, cells)) + ' |', flush=True)


def print_header(*columns: str) -> None:
  print_row(*columns)
  print_row(*['---'] * len(columns))


def write_json(folder: str, name: str, data: dict) -> None:
  """FOLDER/NAME, indented for people to read."""
  with open(os.path.join(folder, name), 'w') as f:
    json.dump(data, f, indent=1)
