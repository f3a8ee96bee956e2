"""MLPerf's rule for one result from several timed runs to a target.

MLPerf Training times each benchmark several times with different seeds (5
for image classification); a run that does not reach the target fails the
whole result, and of the times the fastest and the slowest are dropped
before the mean is taken, so that one lucky or unlucky run moves nothing.
"""

import statistics

# With this many runs or more, the fastest and the slowest are dropped.
DROP_EXTREMES_FROM = 5


def summarize(times: list[float | None]) -> dict:
  """The result of runs' times to target, None for a run that missed.

  {'failed': how many missed} if any did; else {'mean_s': the mean without
  the fastest and the slowest run (of all runs, with fewer than
  DROP_EXTREMES_FROM), 'spread_s': max - min of those, 'kept': their count,
  'median_s': the median of all runs}.
  """
  missed = sum(t is None for t in times)
  if missed:
    return {'failed': missed}
  kept = sorted(times)
  if len(kept) >= DROP_EXTREMES_FROM:
    kept = kept[1:-1]
  return {'mean_s': round(statistics.mean(kept), 1),
          'spread_s': round(max(kept) - min(kept), 1), 'kept': len(kept),
          'median_s': round(statistics.median(times), 1)}


def describe(result: dict, *, runs: int) -> str:
  """summarize's result as a table cell."""
  if 'failed' in result:
    return f'failed: {result["failed"]} of {runs} runs missed the target'
  return (f'{result["mean_s"]} s (mean of {result["kept"]} of {runs}, '
          f'spread {result["spread_s"]} s; median {result["median_s"]} s)')
