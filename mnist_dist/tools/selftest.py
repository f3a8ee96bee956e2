r"""mnist-dist-selftest: the distributed math, checked on this machine first.

  mnist-dist-selftest                       # all GPUs, or the TPU's cores
  mnist-dist-selftest --cpu_devices=2 --out=/tmp/selftest.json
  python -m mnist_dist.selftest --cpu_devices=2

Each row trains or evaluates through the trainer's own loops, input and
models, under the strategy, precision and XLA setting `auto` picks on this
machine, on synthetic data, against one replica on the first of the same
devices (`mnist_dist.tools.measures`). What each row proves and why its
tolerance: docs/design.md#the-self-test. On one device the rows that compare
replicas are skipped: not a failure, but the table says so
(`--cpu_devices=2` runs every row on a CPU).

Prints the table and writes it as JSON to --out. Exit codes: 0 every row
passed or was skipped; 1 a row failed; 2 bad flags or a machine it cannot
run on (one `error:` line).
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Callable

from absl import flags
from absl import logging
import keras
import tensorflow as tf

from mnist_dist import config as config_lib
from mnist_dist.base import cli
from mnist_dist.base import console
from mnist_dist.base import errors
from mnist_dist.base import paths
from mnist_dist.base import tf_internals
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.distribution import strategy as strategy_lib
from mnist_dist.tools import measures

# By the precision auto picks; docs/design.md#the-self-test says why each.
WEIGHTS_TOLERANCE = {'float32': 1e-4, 'mixed_bfloat16': 0.3}
SYNC_BN_TOLERANCE = {'float32': 1e-3, 'mixed_bfloat16': 5e-2}


@dataclasses.dataclass(frozen=True)
class Check:
  """One row: a property, what measures it, and the figure's tolerance: a
  number or {precision auto picks: number}; None: informational (it passes
  when it measured a positive number)."""
  name: str
  claim: str
  measure: Callable[[measures.Machine, measures.Sizes],
                    measures.Measured | measures.Skipped]
  tolerance: float | dict[str, float] | None = None
  multi_replica: bool = False  # Needs 2+ replicas: skipped on one.


@dataclasses.dataclass(frozen=True)
class Row:
  """A row of the table, as printed and written to JSON."""
  name: str
  claim: str
  status: str  # 'pass', 'fail' or 'skipped (why)'.
  measured: float | None
  tolerance: float | None  # None: informational (or skipped).
  detail: str
  figures: dict = dataclasses.field(default_factory=dict)

  @property
  def failed(self) -> bool:
    return self.status == 'fail'


# The rows, in the order they run and print. A new property is one more
# Check here, its break in tests/test_selftest.py and its reasons in
# docs/design.md#the-self-test.
CHECKS = (
    Check('same_global_batches', 'every topology sees the same global batches',
          measures.same_global_batches, 0, multi_replica=True),
    Check('same_weights', 'one replica and all replicas reach the same '
          'weights (SGD)', measures.same_weights, WEIGHTS_TOLERANCE,
          multi_replica=True),
    Check('sync_batch_norm', 'synchronized batch norm gives the one-replica '
          'statistics', measures.sync_batch_norm, SYNC_BN_TOLERANCE,
          multi_replica=True),
    Check('exact_eval', 'evaluation counts every example exactly once, by '
          'content', measures.exact_eval, 1e-5),
    # float32 only: where auto picks bfloat16 (a TPU), the row is skipped.
    Check('xla_step', 'the XLA-compiled step agrees with the plain one',
          measures.xla_step, 2e-2),
    Check('loss_scale', 'mixed_float16: the loss scale is the same on every '
          'replica', measures.loss_scale, 0, multi_replica=True),
    Check('accumulation', 'k micro-batches a replica give the whole '
          "batch's update", measures.accumulation, WEIGHTS_TOLERANCE),
    Check('speed', 'conv_bn examples/s and the matmul rate (informational)',
          measures.speed),
)


# --- the machine, the rows run, the table ---


def _one_replica(strategy: tf.distribute.Strategy) -> tf.distribute.Strategy:
  """A one-replica strategy on the first of strategy's devices."""
  if isinstance(strategy, tf.distribute.TPUStrategy):
    # One TPU core, on the topology strategy.create_strategy initialised.
    return tf.distribute.TPUStrategy(
        strategy.cluster_resolver,
        experimental_device_assignment=tf.tpu.experimental.DeviceAssignment
        .build(tf_internals.initialized_tpu_topology(), num_replicas=1))
  return tf.distribute.OneDeviceStrategy(strategy.extended.worker_devices[0])


def find_machine(*, cpu_devices: int,
                 tpu: str = 'local') -> measures.Machine:
  """This machine's devices under what `auto` picks, as the trainer would.

  Raises:
    ConfigError: no TPU reachable, or a CPU split TensorFlow cannot make.
  """
  config = config_lib.default_config()
  config.distribution.cpu_devices = cpu_devices
  config.distribution.tpu = tpu
  config_lib.validate(config)
  strategy = strategy_lib.create_strategy(config.distribution)
  kind = strategy_lib.device_kind(strategy)
  settings = strategy_lib.device_settings(config.train, device_kind=kind,
                                          steps_per_epoch=1)
  return measures.Machine(
      strategy=strategy, one_replica=_one_replica(strategy), device_kind=kind,
      precision=settings.precision, jit_compile=settings.jit_compile)


def run_check(check: Check, machine: measures.Machine,
              sizes: measures.Sizes) -> Row:
  """The row of one check; one that raises is a failed row, named."""
  started = time.perf_counter()
  tolerance = check.tolerance
  if isinstance(tolerance, dict):
    tolerance = tolerance[machine.precision]
  if check.multi_replica and machine.replicas == 1:
    result = measures.Skipped('1 replica')
  else:
    try:
      result = check.measure(machine, sizes)
    except Exception as e:  # pylint: disable=broad-except
      # Whatever the project's code raises on this machine is its failure.
      first_line = (str(e).strip().splitlines() or [''])[0]
      result = measures.Measured(
          math.nan, f'raised {type(e).__name__}: {first_line}', exact=False)
  if isinstance(result, measures.Skipped):
    row = Row(check.name, check.claim, f'skipped ({result.reason})', None,
              None, 'needs 2 or more replicas (on a CPU: --cpu_devices=2)'
              if result.reason == '1 replica' else 'does not apply here')
  else:
    passed = result.exact and math.isfinite(result.value) and (
        result.value > 0 if tolerance is None else result.value <= tolerance)
    row = Row(check.name, check.claim, 'pass' if passed else 'fail',
              None if math.isnan(result.value) else result.value, tolerance,
              result.detail, result.figures)
  logging.info('%s: %s in %.1f s', row.name, row.status,
               time.perf_counter() - started)
  return row


def run_checks(machine: measures.Machine, *,
               sizes: measures.Sizes = measures.Sizes(),
               checks: tuple[Check, ...] = CHECKS) -> list[Row]:
  """Every row, in order; the Keras precision policy is left as it was."""
  policy = keras.mixed_precision.global_policy()
  try:
    return [run_check(check, machine, sizes) for check in checks]
  finally:
    keras.mixed_precision.set_global_policy(policy)


def _number(value: float | None) -> str:
  if value is None:
    return '-'
  return (f'{value:,.0f}' if value == int(value) or abs(value) >= 100 else
          f'{value:.2g}')


def _summary(rows: list[Row]) -> str:
  failed = sum(row.failed for row in rows)
  skipped = [row.name for row in rows if row.status.startswith('skipped')]
  text = (f'{len(rows)} rows: {len(rows) - failed - len(skipped)} passed, '
          f'{failed} failed')
  return text + (f', {len(skipped)} skipped ({", ".join(skipped)}): skipped '
                 'is not a failure, but it checked nothing' if skipped else '')


def format_table(rows: list[Row], machine: measures.Machine) -> str:
  """The rows as a plain-text table under a line naming the machine."""
  table = [('row', 'result', 'measured', 'tolerance', 'what it measured')]
  table += [(row.name, row.status.upper() if row.failed else row.status,
             _number(row.measured),
             'informational' if row.tolerance is None and (
                 row.measured is not None) else _number(row.tolerance),
             row.detail) for row in rows]
  widths = [max(len(cells[i]) for cells in table) for i in range(4)]
  return '\n'.join([
      f'mnist-dist-selftest: {type(machine.strategy).__name__}, '
      f'{measures.replicas_text(machine.replicas)} on '
      f'{machine.device_kind}, {machine.precision}, XLA '
      f'{"on" if machine.jit_compile else "off"} (what auto picks here)',
      *('  '.join(cell.ljust(width) for cell, width in zip(cells, widths)) +
        '  ' + cells[4] for cells in table), _summary(rows)])


# --- the command ---


class _ArgumentParser(argparse.ArgumentParser):
  """A bad flag is one `error:` line and exit 2, without the usage."""

  def error(self, message):
    _fail(message)


def _fail(message: str) -> None:
  cli.fail(message, errors.EXIT_BAD_INPUT)


def _count(text: str) -> int:
  if not text.isdigit():
    raise argparse.ArgumentTypeError(f'{text!r} is not a count (0, 1, 2, ...)')
  return int(text)


def _parse_flags(argv: list[str]) -> argparse.Namespace:
  parser = _ArgumentParser(
      prog='mnist-dist-selftest', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument(
      '--cpu_devices', type=_count, default=0,
      help="N > 0: Mirrored over N logical CPUs (as the trainer's "
      '--config.distribution.cpu_devices); 0: what auto picks (default).')
  parser.add_argument(
      '--tpu', default='local',
      help='Where the TPU is, on a TPU host: local (a TPU VM, the default), '
      'a TPU name or grpc://host:port (--config.distribution.tpu).')
  parser.add_argument('--out', default='', help='Also write the table as '
                      'JSON to this file (local or gs://).')
  parser.add_argument(
      f'--{console.TF_LOGS_FLAG}', action='store_true',
      help="Also show TensorFlow's own log lines (give it on the command "
      'line: it is read before TensorFlow loads).')
  args = parser.parse_args(argv[1:])
  # absl's own flags are not this command's; app.run wants them parsed.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return args


def run_command(args: argparse.Namespace) -> int:
  """Runs every row, prints the table, writes --out; the exit code."""
  started = time.time()
  try:  # Fails now, not after the rows, when --out cannot be written.
    if args.out and tf.io.gfile.isdir(args.out):
      _fail(f'--out={args.out} is a folder; give a file, e.g. '
            f'{os.path.join(args.out, "selftest.json")}')
    if os.path.dirname(args.out):
      tf.io.gfile.makedirs(os.path.dirname(args.out))
  except tf.errors.OpError as e:
    _fail(f'--out={args.out}: {paths.cause(e)}')
  try:
    machine = find_machine(cpu_devices=args.cpu_devices, tpu=args.tpu)
  except errors.ConfigError as e:
    _fail(str(e))
  rows = run_checks(machine)
  print(format_table(rows, machine), flush=True)
  report = {'machine': machine.describe(),
            'passed': not any(row.failed for row in rows),
            'summary': _summary(rows),
            'elapsed_s': round(time.time() - started, 1),
            'rows': [dataclasses.asdict(row) for row in rows]}
  try:
    if args.out:
      workdir_lib.write_atomically(args.out,
                                   json.dumps(report, indent=2) + '\n')
  except (OSError, tf.errors.OpError) as e:
    _fail(f'--out={args.out}: cannot write it: '
          f'{paths.cause(e) if isinstance(e, tf.errors.OpError) else e}')
  # A failed row: it has printed what it measured.
  return errors.EXIT_FAILED if any(row.failed for row in rows) else 0


def main(args: argparse.Namespace) -> None:
  console.set_up(tf_logs=getattr(args, console.TF_LOGS_FLAG))
  # Every row makes loops of its own, each traced once: TensorFlow counts
  # them as retracings of one function and warns, for nothing.
  tf.get_logger().addFilter(lambda record: 'triggered tf.function retracing'
                            not in record.getMessage())
  sys.exit(run_command(args))


def run():
  """Console-script entry point."""
  cli.run(main, flags_parser=_parse_flags)
