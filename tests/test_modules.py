"""The package's module graph: one way, between modules and between the
folders that hold them; the base a floor of its own, the controller free of
outputs. Read from the source, every import statement (inside functions
too), so a cycle hidden in a function body fails here, not at a user's."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                       'mnist_dist')
# The parts, each a folder; '' is the training core at the top.
PARTS = ('', 'base', 'data', 'distribution', 'modeling', 'outputs', 'tools')
# The top's commands, above everything: the trainer's, and the doors to the
# others' (console scripts and `python -m`).
ENTRY_POINTS = ('main', 'predict', 'selftest', 'plots', 'litert')


def _modules() -> dict[str, str]:
  """{'part.module' (or 'module' for the core): its file}."""
  found = {}
  for part in PARTS:
    folder = os.path.join(PACKAGE, part)
    for name in os.listdir(folder):
      if name.endswith('.py') and name != '__init__.py':
        found[f'{part}.{name[:-3]}'.lstrip('.')] = os.path.join(folder, name)
  return found


def _imports(path: str) -> set[str]:
  """The mnist_dist modules that the file at path imports, anywhere."""
  with open(path) as f:
    tree = ast.parse(f.read())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module == 'mnist_dist' or node.module.startswith('mnist_dist.')):
      prefix = node.module[len('mnist_dist.'):]
      if prefix in PARTS or node.module == 'mnist_dist':
        # from mnist_dist[.part] import module
        imported |= {f'{prefix}.{alias.name}'.lstrip('.')
                     for alias in node.names}
      else:  # from mnist_dist.part.module import name
        imported.add(prefix)
    elif isinstance(node, ast.Import):
      imported |= {alias.name[len('mnist_dist.'):] for alias in node.names
                   if alias.name.startswith('mnist_dist.')}
  return imported


def _graph() -> dict[str, set[str]]:
  return {module: _imports(path) for module, path in _modules().items()}


def _part(module: str) -> str:
  if module in ENTRY_POINTS:
    return 'entry'
  return module.split('.')[0] if '.' in module else 'core'


def _folder_graph() -> dict[str, set[str]]:
  """{part: the parts its modules import}, a part's own imports left out."""
  graph = {}
  for module, imported in _graph().items():
    graph.setdefault(_part(module), set()).update(
        _part(other) for other in imported if _part(other) != _part(module))
  return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """A cycle of graph as [a, b, ..., a], or None."""
  done, path = set(), []

  def visit(node):
    if node in path:
      return path[path.index(node):] + [node]
    if node in done:
      return None
    path.append(node)
    for successor in sorted(graph.get(node, ())):
      found = visit(successor)
      if found:
        return found
    path.pop()
    done.add(node)
    return None

  for node in sorted(graph):
    found = visit(node)
    if found:
      return found
  return None


def test_every_import_names_a_module_that_exists():
  modules = set(_modules())
  for module, imported in _graph().items():
    assert imported <= modules, module


def test_the_module_graph_has_no_cycle():
  assert _cycle(_graph()) is None


def test_the_folders_import_each_other_one_way():
  assert _cycle(_folder_graph()) is None


def test_a_cycle_would_be_found():
  # The check itself, on a graph with a cycle through a function's import.
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
      'a', 'b', 'c', 'a']


def test_the_base_imports_no_other_part():
  assert _folder_graph()['base'] == set()


def test_errors_is_a_leaf():
  assert _imports(_modules()['base.errors']) == set()


@pytest.mark.parametrize('module', ['train', 'steps', 'trainable'])
def test_the_training_modules_import_no_output_but_the_actions(module):
  outputs = {m for m in _imports(_modules()[module]) if _part(m) == 'outputs'}
  assert outputs <= {'outputs.actions', 'outputs.from_config'}
