r"""The LiteRT models of trained runs: their sizes and test accuracies.

  python -m benchmarks.litert --data_dir=../shared/mnist --workdir=/tmp/litert

Trains each config in a new WORKDIR/CONFIG through the real entry point (its
own defaults: 10 epochs), then writes its float and its int8 .tflite with
`litert.write_tflite`, what `mnist-dist-export WORKDIR --format=litert
[--quantize=int8]` runs, which runs each with the LiteRT interpreter on the
10,000 test images. Prints a Markdown table (the SavedModel's size and test
accuracy; each .tflite's size, test accuracy and the share of test images on
which it gives the SavedModel's digit) and writes its rows to
WORKDIR/litert.json.
"""

import os

from absl import app
from absl import flags

from benchmarks import runner
from mnist_dist.base import workdir as workdir_lib
from mnist_dist.outputs import litert

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/litert',
                               'One subfolder per config goes here.')
_CONFIGS = flags.DEFINE_list('configs', list(runner.LADDER), 'Configs to run.')
_SEED = flags.DEFINE_integer('seed', 0, 'config.seed of every run.')


def _folder_bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(parent, name))
             for parent, _, names in os.walk(folder) for name in names)


def main(argv):
  del argv
  rows = []
  for name in _CONFIGS.value:
    workdir = os.path.join(_WORKDIR.value, name)
    runner.run_trainer(name, workdir, f'--config.seed={_SEED.value}',
                       '--config.outputs.plots=False', show_log=True)
    # Before any .tflite lands in the same folder.
    saved_model_bytes = _folder_bytes(
        workdir_lib.path(workdir, workdir_lib.EXPORT))
    written = {quantize: litert.write_tflite(workdir, quantize=quantize)
               for quantize in litert.QUANTIZATIONS}
    rows.append({
        'config': name,
        'saved_model_bytes': saved_model_bytes,
        'saved_model_accuracy': written['none'].saved_model_accuracy,
        **{f'{quantize}_{key}': getattr(written[quantize], key)
           for quantize in litert.QUANTIZATIONS
           for key in ('size_bytes', 'accuracy', 'agreement')},
    })
  runner.print_header('config', 'SavedModel: size, test accuracy',
                      'float .tflite: size, test accuracy, same digit',
                      'int8 .tflite: size, test accuracy, same digit')
  for row in rows:
    runner.print_row(
        f'`{row["config"]}.py`',
        f'{row["saved_model_bytes"]:,} B, {row["saved_model_accuracy"]:.2%}',
        *[f'{row[f"{q}_size_bytes"]:,} B, {row[f"{q}_accuracy"]:.2%}, '
          f'{row[f"{q}_agreement"]:.2%}' for q in litert.QUANTIZATIONS])
  runner.write_json(_WORKDIR.value, 'litert.json',
                    {'seed': _SEED.value, 'machine': runner.machine(),
                     'runs': rows})


if __name__ == '__main__':
  app.run(main)
