"""The cluster a trainer belongs to, read from what launched it.

TensorFlow learns a cluster from TF_CONFIG: every worker's address, and which
one this process is. The local launcher and Vertex AI write it. A pod of the
JobSet of `launch/kubernetes.py` has the workers' addresses as rendered
(MNIST_DIST_WORKER_HOSTS) and its index as Kubernetes numbers an Indexed
Job's pods (JOB_COMPLETION_INDEX). A Slurm step describes its tasks in its
own variables:

  SLURM_STEP_NODELIST        the step's nodes, a host list (`node[01-03],gpu7`)
  SLURM_STEP_TASKS_PER_NODE  tasks on each of them (`2(x3),1`)
  SLURM_DISTRIBUTION         how ranks are laid over the nodes (block, cyclic)
  SLURM_PROCID               this task's rank: its worker index
  SLURM_STEP_RESV_PORTS      ports reserved for the step on every node
                             (`srun --resv-ports=N`), so that two jobs on one
                             node never share one: the n-th task of a node
                             takes the n-th port

`tf_config` turns each into TF_CONFIG. (TensorFlow's own SlurmClusterResolver
needs `nvidia-smi` on every node, and fails on a CPU node.) Imports nothing of
TensorFlow.
"""

import json
import os
import re
from typing import Mapping

from mnist_dist.base.errors import ConfigError

# Used where a step has no reserved ports (the site's slurm.conf has no
# MpiParams=ports=...): ports from the job's id, which two jobs on one node
# share only when their ids are PORT_SPAN apart.
PORT_BASE = 20000
PORT_SPAN = 1000
_MAX_TASKS_PER_NODE = 40


def _expand_range(text: str) -> list[str]:
  """'01-03' -> ['01', '02', '03'] (zero padding kept); '7' -> ['7']."""
  first, _, last = text.partition('-')
  if not last:
    return [first]
  if not (first.isdigit() and last.isdigit()) or int(last) < int(first):
    raise ValueError(text)
  return [str(n).zfill(len(first)) for n in range(int(first), int(last) + 1)]


def expand_hostlist(hostlist: str) -> list[str]:
  """Slurm's compressed host list as host names, in order:
  'node[01-03,07],gpu7' -> node01, node02, node03, node07, gpu7."""
  hosts = []
  for item in re.findall(r'[^,\[]*(?:\[[^\]]*\][^,\[]*)*', hostlist):
    if not item:
      continue
    parts = re.split(r'\[([^\]]*)\]', item)
    names = ['']
    for i, part in enumerate(parts):
      choices = ([n for piece in part.split(',') for n in _expand_range(piece)]
                 if i % 2 else [part])
      names = [name + choice for name in names for choice in choices]
    hosts += names
  if not hosts:
    raise ValueError(hostlist)
  return hosts


def expand_counts(counts: str) -> list[int]:
  """Slurm's compressed counts: '2(x3),1' -> [2, 2, 2, 1]."""
  expanded = []
  for item in counts.split(','):
    match = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', item.strip())
    if not match:
      raise ValueError(counts)
    expanded += [int(match[1])] * int(match[2] or 1)
  return expanded


def _rank_layout(tasks_per_node: list[int],
                 distribution: str) -> list[tuple[int, int]]:
  """[(node index, index of the task on its node)] of each rank, in rank
  order, as Slurm lays the ranks out: in blocks of consecutive ranks per
  node, or cyclically, one per node in turn."""
  placed = [0] * len(tasks_per_node)
  layout = []
  if distribution == 'block':
    for node, count in enumerate(tasks_per_node):
      layout += [(node, local) for local in range(count)]
    return layout
  while len(layout) < sum(tasks_per_node):  # cyclic
    for node, count in enumerate(tasks_per_node):
      if placed[node] < count:
        layout.append((node, placed[node]))
        placed[node] += 1
  return layout


def _ports(environ: Mapping[str, str], *, needed: int) -> list[int]:
  """The ports of a node's tasks, by their index on the node."""
  reserved = environ.get('SLURM_STEP_RESV_PORTS', '')
  if reserved:
    ports = [int(port) for item in reserved.split(',')
             for port in _expand_range(item)]
    if len(ports) >= needed:
      return ports
    raise ConfigError(
        f'the Slurm step reserved {len(ports)} ports ({reserved}) for '
        f'{needed} tasks on a node: give srun --resv-ports={needed} or more')
  if needed > _MAX_TASKS_PER_NODE:
    raise ConfigError(f'{needed} tasks on one node and no reserved ports: '
                      'give srun --resv-ports')
  job = int(environ.get('SLURM_JOB_ID', '0'))
  restart = int(environ.get('SLURM_RESTART_COUNT', '0'))
  # A requeued job moves on by one, off the ports its last run may still
  # hold in TIME_WAIT.
  base = PORT_BASE + ((job + restart) % PORT_SPAN) * _MAX_TASKS_PER_NODE
  return list(range(base, base + needed))


def slurm_tf_config(environ: Mapping[str, str]) -> dict | None:
  """TF_CONFIG for this task of a Slurm step of several tasks; None outside
  a step or in a step of one task. ConfigError if the step's layout cannot
  be read."""
  if int(environ.get('SLURM_STEP_NUM_TASKS') or 0) < 2:
    return None
  try:
    nodes = expand_hostlist(environ['SLURM_STEP_NODELIST'])
    tasks_per_node = expand_counts(environ['SLURM_STEP_TASKS_PER_NODE'])
    rank = int(environ['SLURM_PROCID'])
  except (KeyError, ValueError) as e:
    raise ConfigError(f'cannot read the Slurm step\'s layout ({e!r}); set '
                      'TF_CONFIG yourself') from None
  distribution = environ.get('SLURM_DISTRIBUTION', 'block')
  distribution = re.split(r'[:,]', distribution)[0] or 'block'
  if distribution not in ('block', 'cyclic'):
    raise ConfigError(f'SLURM_DISTRIBUTION={distribution}: the trainer reads '
                      'block and cyclic layouts; give srun --distribution='
                      'block, or set TF_CONFIG yourself')
  if len(nodes) != len(tasks_per_node):
    raise ConfigError(f'the Slurm step has {len(nodes)} nodes but tasks for '
                      f'{len(tasks_per_node)}; set TF_CONFIG yourself')
  ports = _ports(environ, needed=max(tasks_per_node))
  workers = [f'{nodes[node]}:{ports[local]}' for node, local in
             _rank_layout(tasks_per_node, distribution)]
  return {'cluster': {'worker': workers},
          'task': {'type': 'worker', 'index': rank}}


def indexed_job_tf_config(environ: Mapping[str, str]) -> dict | None:
  """TF_CONFIG for a pod of launch/kubernetes.py's JobSet: the workers'
  addresses as rendered (MNIST_DIST_WORKER_HOSTS), this pod's index as
  Kubernetes numbers it (JOB_COMPLETION_INDEX). None elsewhere."""
  hosts = environ.get('MNIST_DIST_WORKER_HOSTS', '')
  if not hosts:
    return None
  workers = hosts.split(',')
  index = environ.get('JOB_COMPLETION_INDEX', '')
  if not index.isdigit() or int(index) >= len(workers):
    raise ConfigError(f'JOB_COMPLETION_INDEX={index!r} is not the index of '
                      f'one of the {len(workers)} workers of '
                      'MNIST_DIST_WORKER_HOSTS')
  return {'cluster': {'worker': workers},
          'task': {'type': 'worker', 'index': int(index)}}


def tf_config(environ: Mapping[str, str] = os.environ) -> dict | None:
  """The cluster this process belongs to, as TF_CONFIG's dict: TF_CONFIG's
  own, a JobSet pod's or a Slurm step's; None for a process on its own."""
  if environ.get('TF_CONFIG'):
    try:
      return json.loads(environ['TF_CONFIG'])
    except json.JSONDecodeError as e:
      raise ConfigError(f'TF_CONFIG is not JSON ({e})') from None
  return indexed_job_tf_config(environ) or slurm_tf_config(environ)


def cluster_size(config: dict | None) -> int:
  """How many workers (chief included) a TF_CONFIG dict names."""
  cluster = (config or {}).get('cluster', {})
  return sum(len(cluster.get(job, ())) for job in ('chief', 'worker'))


def describe_cluster_in_tf_config() -> int:
  """Writes a Slurm step's cluster into TF_CONFIG, where TensorFlow's
  resolvers read it; returns the number of workers (1 on its own). Call
  before the strategy is created."""
  config = tf_config()
  if config and not os.environ.get('TF_CONFIG'):
    os.environ['TF_CONFIG'] = json.dumps(config)
  return max(cluster_size(config), 1)
