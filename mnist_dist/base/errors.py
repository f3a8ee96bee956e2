"""Every error the project raises on purpose, and the exit code it ends in.

A leaf: it imports nothing of the project, so any module can raise these
without pulling in another (the module graph flows one way: the
implementations import this, never the reverse).

Each class is one kind of outcome a user acts on differently, and its
message is one line that names the cause and what to do, because the entry
points print it as `error: MESSAGE` (`stopped: ...` for an interruption)
and exit with the class's code, never with a traceback:

  ConfigError, DataError,   2   refused before training: fix the input
  WorkdirError, CheckpointError,
  TensorFlowUnsupported
  NonFiniteError            3   diverged: the last good checkpoint is kept
  Interrupted               75  asked to stop, checkpoint saved: run again
  TransientError            75  storage or a network failed for now (nothing
                                lost): run again, as after a stop
  WorkerLost                76  a peer is gone: relaunch the cluster

The tools that read a finished run (predict, export, plots) exit
EXIT_FAILED for an input of theirs they cannot use.
"""

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
# EX_TEMPFAIL: "try again later", which is exactly what resuming does.
EXIT_INTERRUPTED = 75
# EX_PROTOCOL: retryable, like 75, but nobody asked for it.
EXIT_WORKER_LOST = 76


class Error(Exception):
  """The base of this module's errors: a message meant for the user."""


class ConfigError(Error, ValueError):
  """A config value that cannot run; the message names the key."""


class DataError(Error, ValueError):
  """Input data that cannot be used; the message names the file or source."""


class WorkdirError(Error):
  """A workdir that cannot be used: unreachable, denied, a damaged
  config.json, another run's, or in use by another trainer."""


class CheckpointError(Error):
  """Checkpoints that cannot continue this run: one that reads but does not
  fit the model, none of the listed ones readable, or workers that restored
  different steps."""


class TensorFlowUnsupported(Error):
  """A TensorFlow internal the package relies on (base/tf_internals.py) is
  missing or changed in the installed TensorFlow."""

  def __init__(self, what: str, *, version: str, checked_on: str):
    super().__init__(
        f'TensorFlow {version}: {what} is missing or changed; mnist_dist was '
        f'checked on TensorFlow {checked_on}: install one of those')


class NonFiniteError(Error):
  """The loss or the weights became NaN or infinite; the last good
  checkpoint stays the latest."""

  def __init__(self, step: int, what: str = 'loss'):
    super().__init__(
        f'the {what} {"is" if what == "loss" else "are"} not finite at step '
        f'{step}; stopped, keeping the last good checkpoint (a lower '
        'optimizer.learning_rate may help, or train.on_nonfinite_loss=skip to '
        'skip such steps)')
    self.step = step


class Interrupted(Error):
  """Training stopped on a signal after saving a checkpoint.

  In a cluster every worker stops, at the same step, when any one of them is
  signalled; only the chief's checkpoint is kept, so only the chief says so.
  """

  def __init__(self, signal_name: str | None, step: int | None, *,
               chief: bool, trained: bool = False, what: str | None = None):
    cause = f'{signal_name} at step {step}' if signal_name else (
        f'another worker was asked to stop; all stopped at step {step}')
    saved = ('checkpoint saved' if chief
             else 'the chief saved the checkpoint')
    then = ('make the outputs (training is done)' if trained
            else 'resume')
    super().__init__(what or f'{cause}: {saved}; run the same command '
                     f'again to {then}')
    self.step = step

  @classmethod
  def outside_loops(cls, signal_name: str, *,
                    finishing_at: int | None) -> 'Interrupted':
    """A stop while starting (nothing trained since the newest checkpoint)
    or while making the outputs (training done and saved)."""
    if finishing_at is None:
      what = (f'{signal_name} while starting, before training: nothing new '
              'to save; run the same command again to continue')
    else:
      what = (f'{signal_name} while making the outputs: training is saved '
              f'(step {finishing_at}); run the same command again to make '
              'them')
    return cls(signal_name, finishing_at, chief=True, what=what)


class TransientError(Error):
  """The workdir's storage, or a download, failed in a way a retry can help
  (unavailable, timed out, a connection reset). Every file is written whole
  or not at all, so nothing is lost; its code is a stop's, 75 ("try again
  later"), which every launcher of launch/ retries."""


class WorkerLost(Error):
  """A collective failed because another worker of the cluster is gone."""

  def __init__(self, peer: str, step: int | None, checkpoint: str | None, *,
               what: str | None = None):
    what = what or (f'lost {peer} at step {step}' if step is not None
                    else f'lost {peer} before the first step')
    super().__init__(
        f'{what}; the last good checkpoint is '
        f'{checkpoint or "none (the run starts over)"}: relaunch the cluster '
        '(the same command) to resume from it')
    self.peer = peer
    self.step = step

  @classmethod
  def before_forming(cls, peer: str, checkpoint: str | None) -> 'WorkerLost':
    return cls(peer, None, checkpoint,
               what=f'the cluster could not form ({peer} is gone)')
