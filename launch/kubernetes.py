r"""Renders a Kubernetes JobSet that trains on several workers.

  python launch/kubernetes.py --name=mnist --workers=4 \
      --image=REGISTRY/mnist-dist:latest --workdir=gs://BUCKET/run1 \
      -- --config=conv_bn --config.data.dir=gs://BUCKET/mnist > jobset.yaml
  kubectl apply -f jobset.yaml

Everything after `--` goes to every worker's `mnist-dist-train` (the image
must have the package installed). The JobSet (jobset.x-k8s.io, the
successor of Kubeflow's TFJob for TensorFlow) runs one Indexed Job of
--workers pods; JobSet's network gives each pod a stable name under a
headless service (NAME-worker-0-I.NAME), and each worker builds its
TF_CONFIG from those names and its JOB_COMPLETION_INDEX
(mnist_dist/distribution/environment.py): MultiWorkerMirrored over all of
them, worker 0 the chief.

What ends it, by exit code (docs/scaling_out.md has every engine's table):
  0 on every pod        the JobSet completes
  75, 76, or a kill     the whole set is restarted (failurePolicy), up to
                        --max_restarts times, and resumes from the chief's
                        newest checkpoint
  2 or 3                the JobSet fails at once (a pod failure policy on
                        the exit code): bad input or a NaN is not retried

The workdir must be one every pod sees: gs:// (the pods' service account
needs the bucket), or a ReadWriteMany volume claim (--volume_claim, mounted
at --mount_path). This renders the manifest and runs nothing; it has not
run on a real cluster (tests/test_kubernetes.py runs each pod's command on
this machine with the environment Kubernetes gives it).
"""

import json
import re
import sys

from absl import app
from absl import flags

PORT = 2222  # Every pod's own address: one port serves them all.
CONTAINER = 'trainer'
# The trainer's exit codes (mnist_dist/base/errors.py) that no restart mends.
NOT_RETRIED = (2, 3)

_NAME = flags.DEFINE_string('name', 'mnist-dist', 'The JobSet\'s name (a DNS '
                            'label: lower case, digits and -).')
_WORKERS = flags.DEFINE_integer('workers', 2, 'Pods, one trainer each.',
                                lower_bound=1)
_IMAGE = flags.DEFINE_string('image', None, 'The container image, with '
                             'mnist_dist installed.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'gs://... or a path on '
                               '--volume_claim, seen by every pod.')
_MAX_RESTARTS = flags.DEFINE_integer('max_restarts', 5, 'Restarts of the '
                                     'whole set after a stop or a lost worker.',
                                     lower_bound=0)
_VOLUME_CLAIM = flags.DEFINE_string('volume_claim', '', 'A ReadWriteMany '
                                    'PersistentVolumeClaim for the workdir.')
_MOUNT_PATH = flags.DEFINE_string('mount_path', '/workdir', 'Where '
                                  '--volume_claim is mounted.')
_CPU = flags.DEFINE_string('cpu', '', 'Each pod\'s CPU request, e.g. 4.')
_GPUS = flags.DEFINE_integer('gpus', 0, 'GPUs per pod (nvidia.com/gpu); its '
                             'replicas are its GPUs.', lower_bound=0)


def worker_hosts(name: str, workers: int) -> list[str]:
  """Each pod's address: its host name under JobSet's headless service."""
  return [f'{name}-worker-0-{index}.{name}:{PORT}' for index in range(workers)]


def _container(*, image: str, workdir: str, trainer_flags: list[str],
               hosts: list[str], cpu: str, gpus: int,
               volume_claim: str, mount_path: str) -> dict:
  container = {
      'name': CONTAINER,
      'image': image,
      'command': ['mnist-dist-train', f'--workdir={workdir}', *trainer_flags],
      # JOB_COMPLETION_INDEX, which Kubernetes sets for an Indexed Job, is
      # the worker's index in this list.
      'env': [{'name': 'MNIST_DIST_WORKER_HOSTS', 'value': ','.join(hosts)}],
      'ports': [{'containerPort': PORT}],
  }
  resources = {}
  if cpu:
    resources.setdefault('requests', {})['cpu'] = cpu
  if gpus:
    resources.setdefault('limits', {})['nvidia.com/gpu'] = gpus
  if resources:
    container['resources'] = resources
  if volume_claim:
    container['volumeMounts'] = [{'name': 'workdir', 'mountPath': mount_path}]
  return container


def jobset(*, name: str, workers: int, image: str, workdir: str,
           trainer_flags: list[str], max_restarts: int = 5, cpu: str = '',
           gpus: int = 0, volume_claim: str = '',
           mount_path: str = '/workdir') -> dict:
  """The JobSet, as a dict of the manifest."""
  pod = {
      'restartPolicy': 'Never',  # JobSet restarts the set, not one pod.
      'containers': [_container(
          image=image, workdir=workdir, trainer_flags=trainer_flags,
          hosts=worker_hosts(name, workers), cpu=cpu, gpus=gpus,
          volume_claim=volume_claim, mount_path=mount_path)],
  }
  if volume_claim:
    pod['volumes'] = [{'name': 'workdir', 'persistentVolumeClaim': {
        'claimName': volume_claim}}]
  job = {
      'parallelism': workers, 'completions': workers,
      'completionMode': 'Indexed',
      # One failed pod fails the Job, and JobSet restarts every Job: a
      # cluster resumes whole, from the chief's checkpoint.
      'backoffLimit': 0,
      'podFailurePolicy': {'rules': [{
          'action': 'FailJob',
          'onExitCodes': {'containerName': CONTAINER, 'operator': 'In',
                          'values': list(NOT_RETRIED)}}]},
      'template': {'spec': pod},
  }
  return {
      'apiVersion': 'jobset.x-k8s.io/v1alpha2',
      'kind': 'JobSet',
      'metadata': {'name': name},
      'spec': {
          # A headless service NAME: pod NAME-worker-0-I is reachable as
          # NAME-worker-0-I.NAME.
          'network': {'enableDNSHostnames': True, 'subdomain': name},
          'failurePolicy': {
              'maxRestarts': max_restarts,
              # Exit 2 or 3 fails the Job by its pod failure policy: end the
              # set; any other failure (75, 76, a kill) restarts it.
              'rules': [{'action': 'FailJobSet',
                         'onJobFailureReasons': ['PodFailurePolicy']}],
          },
          'replicatedJobs': [{'name': 'worker', 'replicas': 1,
                              'template': {'spec': job}}],
      },
  }


def to_yaml(value, indent: int = 0) -> str:
  """value as YAML: mappings and lists in block style, each scalar as JSON
  (which YAML reads as the same scalar)."""
  pad = ' ' * indent
  lines = []
  items = value.items() if isinstance(value, dict) else enumerate(value)
  for key, item in items:
    head = f'{pad}{key}:' if isinstance(value, dict) else f'{pad}-'
    if isinstance(item, (dict, list)) and item:
      lines.append(head)
      lines.append(to_yaml(item, indent + 2))
    else:
      lines.append(f'{head} {json.dumps(item)}')
  return '\n'.join(lines)


def _refuse(message: str) -> None:
  print(f'kubernetes.py: error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  for flag, value in (('--image', _IMAGE.value), ('--workdir', _WORKDIR.value)):
    if not value:
      _refuse(f'{flag} must be given')
  if not re.fullmatch(r'[a-z]([-a-z0-9]{0,38}[a-z0-9])?', _NAME.value):
    _refuse(f'--name={_NAME.value!r} must be a DNS label of at most 40 '
            'characters: lower case letters, digits and -')
  manifest = jobset(
      name=_NAME.value, workers=_WORKERS.value, image=_IMAGE.value,
      workdir=_WORKDIR.value, trainer_flags=argv[1:],
      max_restarts=_MAX_RESTARTS.value, cpu=_CPU.value, gpus=_GPUS.value,
      volume_claim=_VOLUME_CLAIM.value, mount_path=_MOUNT_PATH.value)
  sys.stdout.write(to_yaml(manifest) + '\n')


if __name__ == '__main__':
  app.run(main)
