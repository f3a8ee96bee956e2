r"""Training speed against model.fit and against the machine's own limit.

  python -m benchmarks.throughput --data_dir=../shared/mnist \
      --configs=conv_bn,dense --out=/tmp/throughput

  # Levers, measured beside the defaults in the same run: config flags, or
  # environment variables (here XLA on the element-wise ops only):
  XLA_OPS='--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit'
  XLA_OPS="$XLA_OPS --tf_xla_ops_to_cluster=FUSIBLE"
  python -m benchmarks.throughput --configs=conv_bn \
      --variant=bf16=--config.train.precision=mixed_bfloat16 \
      --variant="xla_ops=TF_XLA_FLAGS=$XLA_OPS"

  # An environment variable's lever, round by round in fresh processes:
  python -m benchmarks.throughput --configs=conv_bn --repeat=3 \
      --variant=default_allocator=TF_CPU_ALLOCATOR_USE_BFC=false \
      --variant=eigen_kernels=TF_ENABLE_ONEDNN_OPTS=0

For each config, in one run and on the same machine: the codelab recipe
(benchmarks/codelab_fit.py, with TensorFlow's default CPU allocator, as the
codelab runs, on oneDNN's kernels as the trainer) and this trainer with its
defaults (python -m mnist_dist.main, with the BFC allocator and oneDNN's
kernels: console.TF_ENVIRONMENT), then with each --variant, each in a fresh
process training 2 epochs on the real MNIST with the config's global batch.
The second epoch's training examples/s is compared (the first pays for
tracing and warm-up; evaluation is not timed).

Against the machine: the training step's FLOPs per example are counted from
the run's own model (benchmarks/flops.py: TensorFlow's profiler on the traced
forward and backward pass), which makes examples/s an achieved GFLOP/s, shown
as a fraction of the float32 and bfloat16 matmul rates measured in this run
(before the first config and after the last; the better of the two counts,
since a shared machine only makes a rate lower).

Also reports this trainer's time from the command to the end of its first
step loop (start-up, loading, building, tracing: read from the run's
TensorBoard events). Ratios, not absolute speeds, compare across machines
and days. Prints a Markdown table and writes it with the raw numbers to
OUT/throughput.json.
"""

import dataclasses
import os

from absl import app
from absl import flags

from benchmarks import flops
from benchmarks import runner
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.tools import matmul

_OUT = flags.DEFINE_string('out', '/tmp/throughput', 'Output folder.')
_CONFIGS = flags.DEFINE_list('configs', list(runner.LADDER),
                             'Configs to measure.')
_TRAINER_FLAGS = runner.define_trainer_flags()
_REPEAT = flags.DEFINE_integer(
    'repeat', 1, 'How many times to measure every config and variant, one '
    'round after the other: a lever that is an environment variable cannot '
    'be A/B-tested in one process (benchmarks/ab.py), but it can be in '
    'fresh processes, round by round.')
_VARIANTS = flags.DEFINE_multi_string(
    'variant', [], 'NAME=ITEM[,ITEM...]: also run this trainer with these '
    'items, one more row per config. An item is a --config.x=y flag (after '
    '--trainer_flags) or an environment variable VAR=value, e.g. '
    'bf16=--config.train.precision=mixed_bfloat16. Repeatable.')


@dataclasses.dataclass(frozen=True)
class Variant:
  """A way to run the trainer: config flags and environment variables."""
  name: str
  trainer_flags: tuple[str, ...] = ()
  env: tuple[tuple[str, str], ...] = ()


def parse_variant(text: str) -> Variant:
  """A Variant from --variant's NAME=ITEM[,ITEM...]."""
  name, _, items = text.partition('=')
  trainer_flags, env = [], []
  for item in items.split(',') if items else []:
    variable, equals, value = item.partition('=')
    if item.startswith('--config.'):
      trainer_flags.append(item)
    elif equals and variable.isidentifier() and variable.isupper():
      env.append((variable, value))
    else:
      raise app.UsageError(f'--variant={text!r}: {item!r} is neither '
                           '--config.x=y nor VAR=value')
  if not name or not items:
    raise app.UsageError(f'--variant={text!r} is not NAME=ITEM[,ITEM...]')
  return Variant(name, tuple(trainer_flags), tuple(env))


def _trainer_row(name: str, variant: Variant, *, fit_speed: float,
                 out: str) -> dict:
  """One trainer run of config NAME as variant says, against fit_speed."""
  workdir = os.path.join(out, f'{name}_{variant.name}')
  process, records = runner.run_trainer(
      name, workdir, '--config.train.epochs=2', *_TRAINER_FLAGS.value,
      *variant.trainer_flags, env=dict(variant.env))
  config = workdir_lib.read_config(workdir)
  flops_per_example = flops.train_flops_per_example(
      config.model, batch_size=config.train.global_batch_size)
  speed = records[-1]['examples_per_s']
  first_loop_end, *_ = runner.loop_end_times(workdir)
  return {
      'config': name, 'variant': variant.name,
      'trainer_flags': list(variant.trainer_flags), 'env': dict(variant.env),
      'fit_examples_per_s': round(fit_speed),
      'trainer_examples_per_s': round(speed),
      'ratio': round(speed / fit_speed, 2),
      'mflop_per_example': round(flops_per_example / 1e6, 3),
      'gflop_per_s': round(speed * flops_per_example / 1e9, 1),
      'first_loop_s': round(first_loop_end - process.start, 1),
  }


def measure(name: str, out: str, *, round_: int) -> list[dict]:
  """The rows of config NAME: model.fit once, then each trainer variant,
  each with its speed against the defaults' in the same round."""
  _, fit = runner.run_codelab_fit(name, os.path.join(out, f'{name}_fit.jsonl'),
                                  '--epochs=2')
  variants = [Variant('defaults'), *map(parse_variant, _VARIANTS.value)]
  rows = [_trainer_row(name, variant, fit_speed=fit[-1]['examples_per_s'],
                       out=out) for variant in variants]
  for row in rows:
    row.update(round=round_, vs_defaults=round(
        row['trainer_examples_per_s'] / rows[0]['trainer_examples_per_s'], 2))
  return rows


def print_table(rows: list[dict], *, matmul_gflops: dict[str, float]) -> None:
  """The Markdown table of rows, against the matmul rates {dtype: GFLOP/s}."""
  runner.print_header(
      'round', 'config', 'this trainer', 'examples/s', 'vs defaults',
      'model.fit examples/s', 'ratio', 'MFLOP per example', 'GFLOP/s',
      *(f'of {dtype} matmul ({matmul_gflops[dtype]})'
        for dtype in matmul.MATMUL_DTYPES), 'command to first loop end')
  for row in rows:
    runner.print_row(
        row['round'], row['config'], row['variant'],
        f'{row["trainer_examples_per_s"]:,}', f'{row["vs_defaults"]}x',
        f'{row["fit_examples_per_s"]:,}', f'{row["ratio"]}x',
        row['mflop_per_example'], row['gflop_per_s'],
        *(f'{row["gflop_per_s"] / matmul_gflops[dtype]:.0%}'
          for dtype in matmul.MATMUL_DTYPES), f'{row["first_loop_s"]} s')


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  before = matmul.matmul_rates()
  rows = [row for round_ in range(1, _REPEAT.value + 1)
          for name in _CONFIGS.value
          for row in measure(name, _OUT.value, round_=round_)]
  after = matmul.matmul_rates()
  print(runner.describe_machine())
  print(f'Matmul {matmul.MATMUL_SIZE}x{matmul.MATMUL_SIZE}, GFLOP/s before / '
        'after the runs: ' + '; '.join(
            f'{dtype} {before[dtype]} / {after[dtype]}'
            for dtype in matmul.MATMUL_DTYPES))
  print_table(rows, matmul_gflops={dtype: max(before[dtype], after[dtype])
                                   for dtype in matmul.MATMUL_DTYPES})
  runner.write_json(_OUT.value, 'throughput.json',
                    {'machine': runner.machine(),
                     'trainer_flags': _TRAINER_FLAGS.value,
                     'matmul_gflops': {'before': before, 'after': after},
                     'rows': rows})


if __name__ == '__main__':
  app.run(main)
