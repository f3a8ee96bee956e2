"""The actions a config asks for (`config.outputs`), in the order they run.

The order matters where one output reads another's file: the tuning
service reports what metrics.jsonl holds, and the LiteRT models and the
plots read the SavedModel. Actions a caller adds run after these.

An output's module is imported only when the config asks for it, so that a
run carries only what it uses: LiteRT's interpreter comes with `litert`,
matplotlib with `plots`.
"""

from mnist_dist.outputs import actions
from mnist_dist.outputs import metrics_file
from mnist_dist.outputs import profiling
from mnist_dist.outputs import tuning


def _optional(outputs_config) -> list[actions.Action]:
  """The actions of the outputs that can be off, each module imported only
  if its output is on."""
  chosen = []
  if outputs_config.tensorboard:
    from mnist_dist.outputs import summaries
    chosen.append(summaries.TensorBoard())
  if outputs_config.saved_model:
    from mnist_dist.outputs import export
    chosen.append(export.SavedModel())
  if outputs_config.litert or outputs_config.litert_int8:
    from mnist_dist.outputs import litert
    chosen += [litert.LiteRT(quantize=quantize) for quantize, on in (
        ('none', outputs_config.litert),
        ('int8', outputs_config.litert_int8)) if on]
  if outputs_config.plots:
    from mnist_dist.outputs import plots
    chosen.append(plots.Plots())
  return chosen


def from_config(outputs_config, *,
                profile_steps: tuple[int, int] | None) -> list[actions.Action]:
  """The actions of config.outputs; metrics.jsonl is always written.

  profile_steps: outputs.profile_steps as (first, last), or None for off
  (`config.profile_steps` parses it; this part does not import the config).
  """
  chosen = [metrics_file.MetricsFile(), tuning.TuningService(),
            *_optional(outputs_config)]
  if profile_steps:
    first, last = profile_steps
    chosen.append(profiling.Profile(first=first, last=last))
  return chosen
