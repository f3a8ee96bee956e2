"""The two clocks of a timed run to a target accuracy, and their results.

From launch: from the start of the process to the end of the evaluation
that reached the target, what a user waits. MLPerf's: from the first touch
of the data to the end of that evaluation, so initialisation done before
the data is read (imports, building what does not need the data) is left
out. benchmarks/time_to_accuracy.py times runs of this trainer and of the
peer (benchmarks/record_recipe.py) on both; here is the arithmetic, apart
from the processes, so that it can be tested.
"""

from benchmarks import mlperf


def trainer_row(records: list[dict], *, seed: int, launch: float,
                exit_s: float, loop_ends: list[float],
                metrics_written: float, target: float) -> dict:
  """One trainer run's times (seconds from launch) and accuracy.

  mlperf_s, MLPerf's clock: from the start of building the run (the
  records' wall_time - elapsed_s), where the trainer reads the data first,
  to the end of the evaluation that reached the target. The strategy is
  made in that time too (milliseconds); the model's building and the loop's
  tracing come after the data, so the clock holds them, as MLPerf's would.
  """
  first, last = records[0], records[-1]
  data_start = first['wall_time'] - first['elapsed_s']
  row = {'seed': seed, 'startup_s': data_start - launch,
         'first_loop_s': loop_ends[0] - launch if loop_ends else None,
         'last_eval_s': metrics_written - launch, 'exit_s': exit_s,
         'reached_s': None, 'mlperf_s': None, 'epoch': None}
  if 'test_accuracy' in last:  # Validated on a split; tested once, at the end.
    row['accuracy'] = last['test_accuracy']
    row['validation_accuracy'] = last['eval_accuracy']
    reached_at, epoch = ((metrics_written, last['epoch'])
                         if last['test_accuracy'] >= target else (None, None))
  else:
    row['accuracy'] = max(r['eval_accuracy'] for r in records)
    reaching = [r for r in records if r['eval_accuracy'] >= target]
    reached_at, epoch = ((reaching[0]['wall_time'], reaching[0]['epoch'])
                         if reaching else (None, None))
  if reached_at is not None:
    row.update(reached_s=reached_at - launch, mlperf_s=reached_at - data_start,
               epoch=epoch)
  return row


def peer_row(result: dict, *, launch: float, exit_s: float,
             target: float) -> dict:
  """One run of the record recipe (its --out JSON), as trainer_row's.

  Its one epoch is tested once, at the end: the run counts if that reaches
  the target. MLPerf's clock starts where it first reads the data, after
  building the net and its optimizer.
  """
  reached = result['accuracy'] >= target
  return {'seed': result['seed'], 'accuracy': result['accuracy'],
          'startup_s': result['imported'] - launch,
          'first_loop_s': None,
          'last_eval_s': result['eval_end'] - launch, 'exit_s': exit_s,
          'reached_s': result['eval_end'] - launch if reached else None,
          'mlperf_s': result['eval_end'] - result['data_start']
                      if reached else None,
          'epoch': 1 if reached else None,
          'examples_per_s': result['examples_per_s']}


def summarize(runs: list[dict]) -> dict:
  """MLPerf's result of runs on each clock: from launch, and MLPerf's own
  (only where every run has it: model.fit's runs do not)."""
  result = {'launch': mlperf.summarize([r['reached_s'] for r in runs])}
  if all(r['mlperf_s'] is not None or r['reached_s'] is None for r in runs):
    result['mlperf'] = mlperf.summarize([r['mlperf_s'] for r in runs])
  return result
