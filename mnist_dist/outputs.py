"""The actions a config asks for (`config.outputs`), in the order they run.

The order matters where one output reads another's file: the tuning
service reports what metrics.jsonl holds, and the LiteRT models and the
plots read the SavedModel. Actions a caller adds run after these.
"""

from mnist_dist import actions
from mnist_dist import export
from mnist_dist import litert
from mnist_dist import metrics_file
from mnist_dist import plots
from mnist_dist import profiling
from mnist_dist import summaries
from mnist_dist import tuning


def from_config(outputs_config) -> list[actions.Action]:
  """The actions of config.outputs; metrics.jsonl is always written."""
  chosen = [metrics_file.MetricsFile(), tuning.TuningService()]
  if outputs_config.tensorboard:
    chosen.append(summaries.TensorBoard())
  if outputs_config.saved_model:
    chosen.append(export.SavedModel())
  if outputs_config.litert:
    chosen.append(litert.LiteRT(quantize='none'))
  if outputs_config.litert_int8:
    chosen.append(litert.LiteRT(quantize='int8'))
  if outputs_config.plots:
    chosen.append(plots.Plots())
  steps = profiling.parse_steps(outputs_config.profile_steps)
  if steps:
    chosen.append(profiling.Profile(first=steps[0], last=steps[1]))
  return chosen
