"""The notebooks of notebooks/: stored without outputs, and what CI's run of
them (notebooks/run_all.py, in .ci/run) counts as a picture shown."""

import glob
import importlib.util
import json
import os

import pytest

from helpers import ROOT

NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'notebooks', '*.ipynb')))


def test_there_are_notebooks():
  assert NOTEBOOKS


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_a_notebook_is_stored_without_outputs(path):
  with open(path) as f:
    notebook = json.load(f)
  for index, cell in enumerate(notebook['cells']):
    if cell['cell_type'] == 'code':
      assert cell['outputs'] == [], f'cell {index} has outputs'
      assert cell['execution_count'] is None, f'cell {index} has a count'


def _run_all():
  """notebooks/run_all.py as a module; it needs the `notebook` extra."""
  pytest.importorskip('nbclient', reason='the notebook extra is not installed')
  spec = importlib.util.spec_from_file_location(
      'run_all', os.path.join(ROOT, 'notebooks', 'run_all.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_a_tagged_cell_without_its_picture_is_reported():
  nbformat = pytest.importorskip('nbformat')
  v4 = nbformat.v4
  png = v4.new_output('display_data', data={'image/png': 'iVBORw0K'})
  frame = v4.new_output('display_data', data={
      'text/html': '<iframe id="tensorboard-frame-0123"></iframe>'})
  text = v4.new_output('stream', name='stdout', text='no picture')

  def cell(tags, *outputs):
    return v4.new_code_cell(metadata={'tags': tags}, outputs=list(outputs))

  notebook = v4.new_notebook(cells=[
      cell(['picture'], text, png), cell(['tensorboard'], frame),
      cell([], text), cell(['picture'], text), cell(['tensorboard'], png)])
  assert _run_all().missing_outputs(notebook) == [
      'cell 3 (tagged picture) shows no PNG',
      'cell 4 (tagged tensorboard) shows no TensorBoard frame']
