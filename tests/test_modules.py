"""The package's module graph: one way, errors a leaf, the controller free
of outputs. Read from the source, every import statement (inside functions
too), so a cycle hidden in a function body fails here, not at a user's."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(__file__)),
                       'mnist_dist')
# What the controller reaches only through `outputs` and `actions`.
OUTPUT_MODULES = {'metrics_file', 'tuning', 'summaries', 'export', 'litert',
                  'plots'}


def _imports(module: str) -> set[str]:
  """The mnist_dist modules that mnist_dist/MODULE.py imports, anywhere."""
  with open(os.path.join(PACKAGE, module + '.py')) as f:
    tree = ast.parse(f.read())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == 'mnist_dist':  # from mnist_dist import x
        imported |= {alias.name for alias in node.names}
      elif node.module.startswith('mnist_dist.'):  # from mnist_dist.x import y
        imported.add(node.module.split('.')[1])
    elif isinstance(node, ast.Import):
      imported |= {alias.name.split('.')[1] for alias in node.names
                   if alias.name.startswith('mnist_dist.')}
  return imported


def _graph() -> dict[str, set[str]]:
  return {name[:-3]: _imports(name[:-3]) for name in os.listdir(PACKAGE)
          if name.endswith('.py') and name != '__init__.py'}


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


def test_the_module_graph_has_no_cycle():
  assert _cycle(_graph()) is None


def test_a_cycle_would_be_found():
  # The check itself, on a graph with a cycle through a function's import.
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [
      'a', 'b', 'c', 'a']


def test_errors_is_a_leaf():
  assert _imports('errors') == set()


@pytest.mark.parametrize('module', ['train', 'steps', 'trainable'])
def test_the_training_modules_import_no_output(module):
  assert not _imports(module) & OUTPUT_MODULES
