"""What a run leaves in its workdir, and config.json, the record of what it is.

  WORKDIR/
    config.json     the run's config (the chief writes it at the start)
    config_history.jsonl   the values a resumed run changed, one line each
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
Nothing outside the workdir is written or deleted through a link planted in
it: temporaries are new files of unpredictable names, and the clean-up
judges by `os.lstat` (`remove_temporaries`, `remove`).
"""

import contextlib
import datetime
import json
import os
import re
import secrets
import shutil
import socket
import stat
import threading
import time

from absl import logging
import ml_collections
import tensorflow as tf

from mnist_dist.base import paths
from mnist_dist.base.errors import TransientError
from mnist_dist.base.errors import WorkdirError

CONFIG = 'config.json'
CONFIG_HISTORY = 'config_history.jsonl'
CHECKPOINTS = 'checkpoints'
METRICS = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'
EXPORT = 'export'
PLOTS = 'plots'
LOCK = 'lock'

# Every key of config.default_config is in exactly one of the three lists
# below (tests/test_workdir.py checks it), which say what a start that
# resumes a run with another value of it does.
#
# Keys that change the variables, the step -> example mapping or the data: a
# checkpoint made under other values cannot continue this run. Refused.
RUN_DEFINING_KEYS = (
    'seed', 'model.name', 'model.width', 'optimizer.name',
    'train.ema_decay', 'train.global_batch_size',
    'train.precision', 'data.source', 'data.train_examples',
    'data.validation_split',
)
# Keys that change how the rest of the run trains or what it measures: the
# checkpoint fits, but the run would no longer be the one config.json
# describes. Refused unless ACCEPT_CHANGES_KEY is set; then recorded in
# CONFIG_HISTORY. train.epochs only under optimizer.schedule=cosine, which
# decays to 0 by the last epoch, so other epochs move every later step's
# rate; the exponential schedule is a function of the epoch alone, so there
# more epochs train on as a longer run would have (`_alters_training`).
TRAINING_KEYS = (
    'model.dropout', 'model.sync_batch_norm',
    'data.augment.max_shift', 'data.augment.max_rotation',
    'data.augment.max_scale', 'data.augment.elastic_alpha',
    'data.augment.elastic_sigma', 'data.synthetic_train_examples',
    'data.synthetic_eval_examples',
    'train.epochs', 'train.accumulation_steps', 'train.label_smoothing',
    'optimizer.learning_rate', 'optimizer.schedule', 'optimizer.decay_rate',
    'optimizer.staircase', 'optimizer.warmup_epochs', 'optimizer.beta_1',
    'optimizer.beta_2',
)
# Keys of where things go, how often and how fast, and when to stop: the
# steps train alike under any of their values. Free, and recorded in
# CONFIG_HISTORY. train.on_nonfinite_loss is here as the remedy a stopped
# run's NaN message names; it changes nothing while the loss is finite.
FREE_KEYS = (
    'data.dir', 'data.tfds_dir',
    'train.steps_per_loop', 'train.eval_batch_size', 'train.jit_compile',
    'train.on_nonfinite_loss', 'train.stop_at_accuracy',
    'checkpoint.every_steps', 'checkpoint.keep', 'checkpoint.async_save',
    'outputs.tensorboard', 'outputs.saved_model', 'outputs.plots',
    'outputs.litert', 'outputs.litert_int8', 'outputs.profile_steps',
    'distribution.strategy', 'distribution.cpu_devices', 'distribution.tpu',
    'distribution.heartbeat_timeout_s', 'distribution.join_timeout_s',
    'resume.accept_changes',
)
# A start's instruction, not a property of the run: never a change.
ACCEPT_CHANGES_KEY = 'resume.accept_changes'


def path(workdir: str, name: str) -> str:
  """WORKDIR/name, for one of the names above."""
  return os.path.join(workdir, name)


# A temporary is PATH.tmp-PID-RANDOM: its writer's pid says whose it is, and
# the random part makes a name nobody can plant a link at beforehand.
_TEMPORARY = '.tmp-'
# What the clean-up takes for a killed writer's leftover: that, or the
# PATH.tmp-PID of earlier versions.
_LEFTOVER = re.compile(r'\.tmp-\d+(-[0-9a-f]+)?$')
# A new file, never an existing one nor through a link: O_EXCL fails on
# anything already at the name, a dangling link included.
_EXCLUSIVE = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC |
              getattr(os, 'O_NOFOLLOW', 0))


def temporary_name(path: str) -> str:
  """Where this process writes what becomes path when complete: a name that
  differs at each call, so that nobody can prepare it."""
  return f'{path}{_TEMPORARY}{os.getpid()}-{secrets.token_hex(8)}'


def _create(path: str, mode: str):
  """path, created by this call and opened for writing (mode 'w' or 'wb');
  FileExistsError if anything is there already."""
  return os.fdopen(os.open(path, _EXCLUSIVE, 0o666), mode)


def remove(path: str) -> None:
  """Deletes path: a file, a folder with all it holds, or a link itself,
  never what a link points to.

  Locally judged by `os.lstat`, and a folder's links are unlinked, not
  followed (`shutil.rmtree` works through file descriptors on Linux);
  `tf.io.gfile.rmtree` would empty a linked folder outside the workdir. On
  gs:// there are no links.
  """
  if paths.is_remote(path):
    if tf.io.gfile.isdir(path):
      tf.io.gfile.rmtree(path)
    else:
      tf.io.gfile.remove(path)
  elif stat.S_ISDIR(os.lstat(path).st_mode):
    shutil.rmtree(path)
  else:
    os.unlink(path)


def remove_temporaries(workdir: str) -> None:
  """Deletes what a killed writer left under a temporary name.

  Only what the project makes: a regular file or a folder. Anything else
  named like a temporary, a symbolic link above all, is left as it is with
  a warning: the project never makes one, so someone else put it there, and
  what it points to may be anything. Only for the lock's holder: no other
  writer is at work then, but another starter may be setting a stale lock
  aside (`Lock`), which is left to it while new.
  """
  for folder in (workdir, path(workdir, PLOTS), path(workdir, EXPORT)):
    for name in _temporaries_in(folder, top=folder == workdir):
      leftover = os.path.join(folder, name)
      if paths.is_remote(leftover):
        kind = 'folder' if tf.io.gfile.isdir(leftover) else 'file'
      else:
        try:
          status = os.lstat(leftover)
        except FileNotFoundError:
          continue  # A stale lock that another starter set aside, and removed.
        if name.startswith(LOCK + _TEMPORARY) and (
            time.time() - status.st_ctime < Lock.FRESH_S):
          continue  # Being set aside (a rename sets its time): not ours.
        mode = status.st_mode
        kind = ('folder' if stat.S_ISDIR(mode) else
                'file' if stat.S_ISREG(mode) else None)
      if kind is None:
        logging.warning('Leaving %s: named like a temporary, but not a file '
                        'or folder this program makes.', leftover)
        continue
      logging.warning('Removing %s, left by a writer that was stopped.',
                      leftover)
      remove(leftover)


def _temporaries_in(folder: str, *, top: bool) -> list[str]:
  """The names in folder that look like temporaries. Below the workdir
  (`top` false) a folder that is a link is not looked into: what it holds is
  not the workdir's."""
  if paths.is_remote(folder):
    if not tf.io.gfile.isdir(folder):
      return []
    names = [name.rstrip('/') for name in tf.io.gfile.listdir(folder)]
  else:
    try:
      mode = os.stat(folder).st_mode if top else os.lstat(folder).st_mode
    except FileNotFoundError:
      return []
    if not stat.S_ISDIR(mode):
      return []
    names = os.listdir(folder)
  return [name for name in names if _LEFTOVER.search(name)]


def write_atomically(path: str, data: str | bytes) -> None:
  """Writes path whole or not at all, whatever stops the process meanwhile.

  Locally: a new temporary file in the same folder (`temporary_name`,
  created exclusively, never through a link), flushed to disk, renamed over
  path (a rename within a file system is atomic, and replaces a link at
  path, never writes through it). On an object store (gs://) an object
  appears only once its upload is complete, so it is written directly.
  """
  mode = 'wb' if isinstance(data, bytes) else 'w'
  if paths.is_remote(path):
    with tf.io.gfile.GFile(path, mode) as f:
      f.write(data)
    return
  temporary = temporary_name(path)
  with _create(temporary, mode) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


# What TensorFlow's messages say, lowercased, when a collective, the
# coordination service's health check or the connection to another worker
# failed: a peer's doing, not the store's (`cluster.peer_failures`).
PEER_SIGNS = ('collective', 'heartbeat', 'unhealthy', 'coordination', 'grpc',
              'socket closed', 'connection reset', 'failed to connect',
              'from peer')


def _names(error: BaseException, workdir: str) -> bool:
  """Whether error is about a file of workdir: its message, or an OSError's
  file names, say a path in it."""
  if any(sign in str(error).lower() for sign in PEER_SIGNS):
    return False  # A collective that failed while saving: a peer's doing.
  places = {workdir.rstrip('/')}
  if not paths.is_remote(workdir):
    places.add(os.path.abspath(workdir))
  named = [str(error), *(str(name) for name in (
      getattr(error, 'filename', None), getattr(error, 'filename2', None))
                         if name)]
  return any(place in text for place in places for text in named)


@contextlib.contextmanager
def storage_failures(workdir: str):
  """A storage error about a file of workdir, as one line that says whether
  to run again (`TransientError`) or to fix the store first (WorkdirError).

  Only errors that name the workdir: a storage error is this worker's own,
  not a lost peer's (a cluster's `peer_failures` then leaves it be), and
  anything else keeps its traceback. Every file is written whole or not at
  all, so either way the next start continues from the last good checkpoint.
  """
  try:
    yield
  except (tf.errors.OpError, OSError) as e:
    if not _names(e, workdir):
      raise
    first_line = (str(e).strip().splitlines() or [''])[0]
    what = f'{type(e).__name__}: {first_line}'
    if paths.is_transient(e):
      raise TransientError(
          f'{workdir}: its storage failed for now ({what}); run the same '
          'command again: it continues from the last good checkpoint') from e
    raise WorkdirError(
        f'{workdir}: its storage failed ({what}); fix it (space, '
        'permissions), then run the same command again: it continues from '
        'the last good checkpoint') from e


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


def _flatten(config_dict: dict, prefix: str = '') -> dict:
  """{dotted key: value} of a nested config dict's leaves."""
  flat = {}
  for key, value in config_dict.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def check_and_record_config(config, workdir: str, *, write: bool) -> None:
  """Refuses a start that would make the workdir's run another one.

  Against WORKDIR/config.json, the run so far: another value of a
  RUN_DEFINING_KEYS key is refused; of a TRAINING_KEYS key too, unless
  config.resume.accept_changes; of a FREE_KEYS key is not. Every change
  let through is appended to WORKDIR/config_history.jsonl (time, and
  key: [old, new]), so that config.json's earlier values are not lost. A
  key that config.json lacks (a version before it) is taken as unchanged.

  Writes WORKDIR/config.json (the chief only, `write`), so that the next
  start, and `python -m mnist_dist.plots`, know what this run is.
  """
  changes = {}
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
    old, new = _flatten(previous), _flatten(current)
    changes = {key: [old[key], value] for key, value in new.items()
               if key in old and old[key] != value and
               key != ACCEPT_CHANGES_KEY}
    refused = [key for key in changes if _alters_training(key, config)]
    if refused and not config.resume.accept_changes:
      listed = '; '.join(f'{key}: {changes[key][0]!r} -> {changes[key][1]!r}'
                         for key in refused)
      raise WorkdirError(
          f'{workdir} holds a run trained with other values ({listed}): '
          'resume with the same values, or add '
          f'--config.{ACCEPT_CHANGES_KEY}=True to train on with these '
          f'(recorded in {CONFIG_HISTORY})')
  if write:
    tf.io.gfile.makedirs(workdir)
    if changes:  # Before config.json: a stop between repeats it, not loses.
      _record_changes(workdir, changes)
    write_atomically(path(workdir, CONFIG), config.to_json(indent=2))


def _alters_training(key: str, config) -> bool:
  """Whether another value of key makes the resumed run another one."""
  if key == 'train.epochs':
    return config.optimizer.schedule == 'cosine'
  return key in TRAINING_KEYS


def _record_changes(workdir: str, changes: dict) -> None:
  """Appends one line to WORKDIR/CONFIG_HISTORY, whole or not at all (the
  file is rewritten: gs:// cannot append)."""
  history = path(workdir, CONFIG_HISTORY)
  text = ''
  if tf.io.gfile.exists(history):
    with tf.io.gfile.GFile(history) as f:
      text = f.read()
  record = {'time': datetime.datetime.now().astimezone().isoformat(
      timespec='seconds'), 'changed': changes}
  write_atomically(history, text + json.dumps(record) + '\n')


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

  Locally every step is atomic, so that of two starters exactly one holds
  it: the lock file is created exclusively, and a stale one is first renamed
  aside (of two renamers one succeeds), then checked to be the very file
  judged stale (else put back), then replaced by an exclusive create. A
  lock file still unreadable (just created, being written) and younger than
  FRESH_S is respected. The renewer rewrites the file in place only while
  it still names this process; if another took it over, or it cannot be
  written, `lost` says why and the trainer stops (`interrupts.SignalWatch`).
  On gs:// there is no exclusive create through tf.io.gfile, so two starts
  within a second of each other could both succeed.
  """

  RENEW_S = 30
  STALE_S = 120
  FRESH_S = 10

  def __init__(self, workdir: str, *, enabled: bool = True):
    self._path = path(workdir, LOCK)
    self._enabled = enabled
    self._local = not paths.is_remote(self._path)
    self._stop = threading.Event()
    self._renewer = threading.Thread(target=self._renew, daemon=True)
    self._lost = None
    self._holder = {'host': socket.gethostname(), 'pid': os.getpid(),
                    'started': datetime.datetime.now().astimezone().isoformat(
                        timespec='seconds'),
                    **_process_identity(os.getpid())}

  def lost(self) -> WorkdirError | None:
    """Why this process no longer holds the workdir, once its renewer found
    out; None while it holds it."""
    return self._lost

  def _text(self) -> bytes:
    return json.dumps({**self._holder, 'renewed': time.time()}).encode()

  def _read(self, path: str | None = None) -> tuple[dict, tuple] | None:
    """(the holder written in the lock file at path, what identifies that
    file: inode, mtime and bytes), or None if there is none. The holder is
    {} if the file is unreadable: torn by a crash, or being written."""
    path = path or self._path
    if not self._local:
      try:
        with tf.io.gfile.GFile(path, 'rb') as f:
          found = (None, tf.io.gfile.stat(path).mtime_nsec, f.read())
      except tf.errors.NotFoundError:
        return None
    else:
      try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC |
                     getattr(os, 'O_NOFOLLOW', 0))
      except FileNotFoundError:
        return None
      except OSError as e:  # ELOOP: a link, which this program never makes.
        raise WorkdirError(
            f'{path} is not a lock file this program made ({e.strerror}): '
            'remove it, or use another --workdir') from None
      with os.fdopen(fd, 'rb') as f:
        status = os.fstat(f.fileno())
        found = (status.st_ino, status.st_mtime_ns, f.read())
    try:
      holder = json.loads(found[2])
    except ValueError:
      holder = {}
    return (holder if isinstance(holder, dict) else {}), found

  def _stale_because(self, holder: dict, mtime_ns: int) -> str | None:
    if not holder:
      if time.time() - mtime_ns / 1e9 < self.FRESH_S:
        return None  # Just created: its writer is at work.
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

  def _taken(self) -> WorkdirError:
    return WorkdirError(f'{os.path.dirname(self._path)} was just taken by '
                        f'another trainer ({self._path})')

  def _create(self) -> bool:
    """Writes the lock if there is none; False if there is one."""
    if not self._local:
      if tf.io.gfile.exists(self._path):
        return False
      write_atomically(self._path, self._text())
      return True
    try:
      with _create(self._path, 'wb') as f:
        f.write(self._text())
    except FileExistsError:
      return False
    return True

  def _set_aside(self, judged: tuple) -> bool:
    """Moves the stale lock file `judged` out of the way; False if another
    starter was quicker (it moved it, or what is there now is not it)."""
    if not self._local:
      try:
        tf.io.gfile.remove(self._path)
      except tf.errors.NotFoundError:
        return False
      return True
    aside = temporary_name(self._path)
    try:
      os.rename(self._path, aside)  # Atomic: of two renamers, one succeeds.
    except FileNotFoundError:
      return False
    moved = self._read(aside)
    if moved and moved[1] == judged:
      os.unlink(aside)
      return True
    # Another's new lock, taken over between our reading and renaming: put
    # back, unless a third was quicker still (whose lock then wins).
    with contextlib.suppress(FileExistsError, FileNotFoundError):
      os.link(aside, self._path)
    with contextlib.suppress(FileNotFoundError):
      os.unlink(aside)
    return False

  def _take(self) -> None:
    for _ in range(3):  # A holder may release it as it is read.
      if self._create():
        return
      found = self._read()
      if found is None:
        continue
      holder, judged = found
      reason = self._stale_because(holder, judged[1])
      if reason is None:
        workdir = os.path.dirname(self._path)
        if not holder:
          raise WorkdirError(
              f'{workdir} is being taken by another trainer ({self._path} '
              'was just created); wait for it to end, or use another '
              '--workdir')
        raise WorkdirError(
            f'{workdir} is in use by pid {holder.get("pid")} on '
            f'{holder.get("host")} since {holder.get("started")} '
            f'({self._path}); wait for it to end, or use another --workdir')
      if not self._set_aside(judged):
        raise self._taken()
      logging.warning('Taking over %s from pid %s on %s: %s.', self._path,
                      holder.get('pid'), holder.get('host'), reason)
      if not self._create():
        raise self._taken()
      return
    raise self._taken()

  def __enter__(self):
    if not self._enabled:
      return self
    self._take()
    self._renewer.start()
    remove_temporaries(os.path.dirname(self._path))
    return self

  def _ours(self, holder: dict) -> bool:
    return all(holder.get(key) == value for key, value in self._holder.items())

  def _renew(self):
    while not self._stop.wait(self.RENEW_S):
      try:
        found = self._read()
        if found is None or not self._ours(found[0]):
          now = (f'names pid {found[0].get("pid")} on '
                 f'{found[0].get("host")}' if found else 'is gone')
          self._lost = WorkdirError(
              f'{os.path.dirname(self._path)}: lost its lock to another '
              f'trainer ({self._path} {now}); stopped, keeping the last '
              'checkpoint: run one trainer at a time per workdir')
          return
        self._rewrite(found[1][0])
      except (OSError, tf.errors.OpError, WorkdirError) as e:
        cause = paths.cause(e) if isinstance(e, tf.errors.OpError) else e
        self._lost = WorkdirError(
            f'{os.path.dirname(self._path)}: cannot renew its lock '
            f'{self._path} ({cause}); stopped, keeping the last checkpoint: '
            'run the same command again to resume once it can be written')
        return

  def _rewrite(self, inode: int | None) -> None:
    """Writes the renewed lock over the file `inode`, this process's. In
    place, never a new file: one renamed aside meanwhile is the one
    written, not a newer holder's. Read half-written, it is unreadable and
    fresh, so respected."""
    if not self._local:
      write_atomically(self._path, self._text())
      return
    fd = os.open(self._path, os.O_WRONLY | os.O_CLOEXEC |
                 getattr(os, 'O_NOFOLLOW', 0))
    try:
      if os.fstat(fd).st_ino != inode:
        raise OSError(f'{self._path} was replaced')
      text = self._text()
      os.pwrite(fd, text, 0)
      os.ftruncate(fd, len(text))
    finally:
      os.close(fd)

  def __exit__(self, *exc_info):
    if not self._enabled:
      return
    self._stop.set()
    self._renewer.join()
    if self._lost:
      if exc_info[0] is None:
        raise self._lost
      return  # Not ours any more, or not writable: left as it is.
    found = self._read()
    if found and self._ours(found[0]):
      remove(self._path)
