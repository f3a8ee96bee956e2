r"""Executes every notebook of this folder top to bottom and checks its pictures.

  MNIST_DIR=../shared/mnist MNIST_DIST_QUICK=1 \
      python notebooks/run_all.py /tmp/executed

as CI does (.ci/run). Each NAME.ipynb runs in a fresh kernel of this Python,
started in this folder as Jupyter would, with the caller's environment
(MNIST_DIR, MNIST_DIST_QUICK) and two changes: TMPDIR is OUT/NAME.tmp, where
the notebook keeps its workdirs and TensorBoard its notes of the servers it
started, and this Python's bin folder comes first on PATH (as an activated
virtualenv's does), where the `%tensorboard` magic finds `tensorboard`. The
executed copy is written to OUT/NAME.ipynb, outputs and all.

A notebook fails if a cell raises, or if a cell it tags `picture` shows no
PNG, or one it tags `tensorboard` no TensorBoard frame: the magic prints an
error and returns when the server does not start, so only its output tells.
Any TensorBoard server still running at the end is stopped, by the pid it
noted.
"""

import argparse
import glob
import json
import os
import signal
import sys
import time

import nbclient
import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
# Cell tag: (what an output must have, what it is called in an error).
EXPECTED = {
    'picture': (lambda output: 'image/png' in output.get('data', {}),
                'PNG'),
    'tensorboard': (lambda output: 'tensorboard-frame' in
                    output.get('data', {}).get('text/html', ''),
                    'TensorBoard frame'),
}


def missing_outputs(notebook) -> list[str]:
  """What the tagged cells of an executed notebook fail to show."""
  problems = []
  for index, cell in enumerate(notebook.cells):
    for tag in cell.get('metadata', {}).get('tags', []):
      if tag in EXPECTED:
        shows, what = EXPECTED[tag]
        if not any(shows(output) for output in cell.get('outputs', [])):
          problems.append(f'cell {index} (tagged {tag}) shows no {what}')
  return problems


def _stop_tensorboards(tmp: str) -> None:
  """Stops any TensorBoard server a notebook left running, by the pid it
  noted in TMPDIR/.tensorboard-info (tensorboard.manager's notes).

  The kernel's shutdown interrupts its process group, which stops them; a
  kernel that died would leave them serving.
  """
  for path in glob.glob(os.path.join(tmp, '.tensorboard-info', '*.info')):
    with open(path) as f:
      pid = json.load(f)['pid']
    try:
      os.kill(pid, signal.SIGTERM)
      print(f'  stopped TensorBoard (pid {pid})')
    except ProcessLookupError:
      pass


def execute(path: str, out: str, *, timeout: int) -> None:
  """Executes the notebook at path into OUT and checks its tagged cells."""
  name = os.path.splitext(os.path.basename(path))[0]
  tmp = os.path.join(out, name + '.tmp')
  os.makedirs(tmp, exist_ok=True)
  env = dict(os.environ, TMPDIR=tmp, PATH=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get('PATH', '')]))
  notebook = nbformat.read(path, as_version=4)
  executed = os.path.join(out, name + '.ipynb')
  started = time.time()
  try:
    nbclient.NotebookClient(
        notebook, timeout=timeout, kernel_name='python3',
        resources={'metadata': {'path': HERE}}).execute(env=env)
  finally:
    nbformat.write(notebook, executed)
    _stop_tensorboards(tmp)
  problems = missing_outputs(notebook)
  if problems:
    raise RuntimeError(f'{executed}: ' + '; '.join(problems))
  pictures = sum('image/png' in output.get('data', {})
                 for cell in notebook.cells for output in cell.get('outputs', []))
  print(f'{path}: ran in {time.time() - started:.0f}s, showed {pictures} '
        f'pictures; executed copy: {executed}')


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('out', help='Folder for the executed copies (created).')
  parser.add_argument('--timeout', type=int, default=1800,
                      help='Seconds a cell may run (default: %(default)s).')
  args = parser.parse_args()
  paths = sorted(glob.glob(os.path.join(HERE, '*.ipynb')))
  if not paths:
    sys.exit(f'no notebooks in {HERE}')
  for path in paths:
    execute(path, os.path.abspath(args.out), timeout=args.timeout)


if __name__ == '__main__':
  main()
