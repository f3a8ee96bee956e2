"""What a run leaves in its workdir, and config.json, the record of what it is.

  WORKDIR/
    config.json     the run's config (the chief writes it at the start)
    checkpoints/    the chief's checkpoints (`checkpoints.Checkpointer`)
    metrics.jsonl   one JSON record per evaluation (`reporting`)
    tensorboard/    train/ and eval/ summaries (`summaries`)
    export/         the SavedModel, at the end (`export`)
    plots/          PNG plots, at the end (`plots`)

    lock            who is training in this workdir now (the chief only)

A workdir may be local or on gs://; starting again with the same workdir
resumes its run, which config.json makes safe: a start with other
run-defining values is refused. Every file is written whole or not at all
(`write_atomically`), and one trainer at a time holds the workdir (`Lock`).
"""

import datetime
import json
import os
import socket
import threading
import time

from absl import logging
import ml_collections
import tensorflow as tf

from mnist_dist.base import paths
from mnist_dist.base.errors import WorkdirError

CONFIG = 'config.json'
CHECKPOINTS = 'checkpoints'
METRICS = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'
EXPORT = 'export'
PLOTS = 'plots'
LOCK = 'lock'

# Keys that change the variables, the step -> example mapping or the data: a
# checkpoint made under other values cannot continue this run.
RUN_DEFINING_KEYS = (
    'seed', 'model.name', 'model.width', 'optimizer.name',
    'train.ema_decay', 'train.global_batch_size',
    'train.precision', 'data.source', 'data.train_examples',
    'data.validation_split',
)


def path(workdir: str, name: str) -> str:
  """WORKDIR/name, for one of the names above."""
  return os.path.join(workdir, name)


_TEMPORARY = '.tmp-'


def temporary_name(path: str) -> str:
  """Where this process writes what becomes path when complete."""
  return f'{path}{_TEMPORARY}{os.getpid()}'


def remove_temporaries(workdir: str) -> None:
  """Deletes what a killed writer left under a temporary name.

  Only for the lock's holder: no other writer is at work then.
  """
  for folder in (workdir, path(workdir, PLOTS)):
    if not tf.io.gfile.isdir(folder):
      continue
    for name in tf.io.gfile.listdir(folder):
      if _TEMPORARY in name:
        leftover = os.path.join(folder, name.rstrip('/'))
        logging.warning('Removing %s, left by a writer that was stopped.',
                        leftover)
        if tf.io.gfile.isdir(leftover):
          tf.io.gfile.rmtree(leftover)
        else:
          tf.io.gfile.remove(leftover)


def write_atomically(path: str, data: str | bytes) -> None:
  """Writes path whole or not at all, whatever stops the process meanwhile.

  Locally: a temporary file in the same folder, flushed to disk, renamed over
  path (a rename within a file system is atomic). On an object store (gs://)
  an object appears only once its upload is complete, so it is written
  directly.
  """
  mode = 'wb' if isinstance(data, bytes) else 'w'
  if paths.is_remote(path):
    with tf.io.gfile.GFile(path, mode) as f:
      f.write(data)
    return
  temporary = temporary_name(path)
  with open(temporary, mode) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def check_usable(workdir: str) -> None:
  """Creates workdir, or raises WorkdirError saying why it cannot be used."""
  try:
    tf.io.gfile.makedirs(workdir)
  except tf.errors.OpError as e:
    raise WorkdirError(f'--workdir={workdir}: cannot use it: '
                      f'{paths.cause(e)}') from e


def _lookup(config_dict: dict, dotted: str):
  for part in dotted.split('.'):
    config_dict = config_dict.get(part, {}) if isinstance(config_dict,
                                                          dict) else None
  return config_dict


def _read_json(workdir: str) -> dict:
  with tf.io.gfile.GFile(path(workdir, CONFIG)) as f:
    text = f.read()
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise WorkdirError(
        f'{path(workdir, CONFIG)} is damaged ({e}); it records the run in '
        'this workdir: restore it, or use a new --workdir') from e


def check_and_record_config(config, workdir: str, *, write: bool) -> None:
  """Refuses a workdir whose earlier run had other run-defining values.

  Writes WORKDIR/config.json (the chief only, `write`), so that the next
  start, and `python -m mnist_dist.plots`, know what this run was.
  """
  if tf.io.gfile.exists(path(workdir, CONFIG)):
    previous = _read_json(workdir)
    current = json.loads(config.to_json())
    differences = [
        f'{key} was {_lookup(previous, key)!r}, now {_lookup(current, key)!r}'
        for key in RUN_DEFINING_KEYS
        if _lookup(previous, key) != _lookup(current, key)]
    if differences:
      raise WorkdirError(
          f'{workdir} holds a run with another config ({"; ".join(differences)}'
          '): use a new --workdir, or the same values to resume it')
  if write:
    tf.io.gfile.makedirs(workdir)
    write_atomically(path(workdir, CONFIG), config.to_json(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run recorded in WORKDIR/config.json."""
  if not tf.io.gfile.exists(path(workdir, CONFIG)):
    raise FileNotFoundError(
        f'{path(workdir, CONFIG)}: no such file; is {workdir} a workdir?')
  return ml_collections.ConfigDict(_read_json(workdir))


def _read_text(path: str) -> str | None:
  try:
    with open(path) as f:
      return f.read()
  except OSError:
    return None


def _process_identity(pid: int) -> dict:
  """{'boot_id': this boot's, 'process_start': pid's start in clock ticks
  since boot}, where /proc tells (Linux); an empty dict elsewhere.

  Together with the host and pid they name one process for good: pids are
  reused, but not within one boot at one start time.
  """
  identity = {}
  boot_id = _read_text('/proc/sys/kernel/random/boot_id')
  if boot_id:
    identity['boot_id'] = boot_id.strip()
  stat = _read_text(f'/proc/{pid}/stat')
  if stat:
    # Field 22, counted after the command name, which may hold spaces.
    identity['process_start'] = int(stat.rpartition(')')[2].split()[19])
  return identity


class Lock:
  """WORKDIR/lock: the one trainer writing to a workdir.

  A context: entering takes the lock or raises WorkdirError naming its holder
  (host, pid, start time); leaving releases it. The holder renews it every
  RENEW_S; a lock is stale, and taken over with a warning, when its holder's
  process is gone from this host, or when it has not been renewed for
  STALE_S (a holder on another machine, or one whose machine is gone).
  Multi-worker runs share their workdir: only the chief takes the lock.

  A process is known by more than its pid, which a container restarted in
  place reuses (the trainer is PID 1 again, on the same hostname) and a busy
  host recycles: the lock also records the kernel's boot id and the
  process's start time since boot (`_process_identity`). A holder on this
  host whose boot id differs died with the previous boot; one whose pid now
  belongs to a process that started at another time died too.

  Locally the lock file is created exclusively, so two trainers cannot both
  take it; on gs:// there is no exclusive create through tf.io.gfile, so two
  starts within a second of each other could both succeed.
  """

  RENEW_S = 30
  STALE_S = 120

  def __init__(self, workdir: str, *, enabled: bool = True):
    self._path = path(workdir, LOCK)
    self._enabled = enabled
    self._stop = threading.Event()
    self._renewer = threading.Thread(target=self._renew, daemon=True)
    self._holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                    'started': datetime.datetime.now().astimezone().isoformat(
                        timespec='seconds'),
                    **_process_identity(os.getpid())}

  def _write(self, *, exclusive: bool) -> None:
    text = json.dumps({**self._holder, 'renewed': time.time()})
    if exclusive and not paths.is_remote(self._path):
      with open(self._path, 'x') as f:  # Fails if another took it first.
        f.write(text)
    else:
      write_atomically(self._path, text)

  def _read(self) -> dict | None:
    try:
      with tf.io.gfile.GFile(self._path) as f:
        return json.loads(f.read())
    except tf.errors.NotFoundError:
      return None
    except json.JSONDecodeError:
      return {}  # Torn by a crash while writing: nobody holds it.

  def _stale_because(self, holder: dict) -> str | None:
    if not holder:
      return 'it is unreadable'
    if holder.get('host') == self._holder['host']:
      reason = self._dead_on_this_host(holder)
      if reason:
        return reason
    if time.time() - holder.get('renewed', 0) > self.STALE_S:
      return f'it was last renewed over {self.STALE_S} s ago'
    return None

  def _dead_on_this_host(self, holder: dict) -> str | None:
    """Why holder, of this host, is a dead process; None if it may live."""
    pid = holder.get('pid')
    boot_id = self._holder.get('boot_id')
    if boot_id and holder.get('boot_id') not in (None, boot_id):
      return 'its machine has restarted since'
    if pid == os.getpid():
      # Not this process, which holds nothing yet: a predecessor with the
      # same pid, as a container restarted in place is PID 1 again.
      return f'its process {pid} was an earlier one with this pid'
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return f'its process {pid} no longer exists'
    except PermissionError:
      pass  # Alive, another user's.
    start = _process_identity(pid).get('process_start')
    if start is not None and holder.get('process_start') not in (None, start):
      return f'its process {pid} has ended (the pid is now another process)'
    return None

  def __enter__(self):
    if not self._enabled:
      return self
    holder = self._read()
    if holder is not None:
      reason = self._stale_because(holder)
      if reason is None:
        raise WorkdirError(
            f'{os.path.dirname(self._path)} is in use by pid '
            f'{holder["pid"]} on {holder["host"]} since {holder["started"]} '
            f'({self._path}); wait for it to end, or use another --workdir')
      logging.warning('Taking over %s from pid %s on %s: %s.', self._path,
                      holder.get('pid'), holder.get('host'), reason)
      tf.io.gfile.remove(self._path)
    try:
      self._write(exclusive=True)
    except FileExistsError:
      raise WorkdirError(f'{os.path.dirname(self._path)} was just taken by '
                        f'another trainer ({self._path})') from None
    self._renewer.start()
    remove_temporaries(os.path.dirname(self._path))
    return self

  def _renew(self):
    while not self._stop.wait(self.RENEW_S):
      self._write(exclusive=False)

  def __exit__(self, *exc_info):
    if not self._enabled:
      return
    self._stop.set()
    self._renewer.join()
    holder = self._read() or {}
    if (holder.get('pid'), holder.get('host')) == (self._holder['pid'],
                                                   self._holder['host']):
      tf.io.gfile.remove(self._path)
