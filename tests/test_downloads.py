"""An offline start is told in seconds: one connection attempt to TFDS's
download host, on loopback and reserved names only."""

import socket

import pytest

from mnist_dist.data import downloads


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
  for name in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'):
    monkeypatch.delenv(name, raising=False)


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_a_name_that_does_not_resolve_is_unreachable():
  # .invalid never resolves (RFC 2606).
  assert downloads.unreachable('https://mnist-dist.invalid/mnist/').startswith(
      'mnist-dist.invalid does not resolve (')


def test_a_refused_connection_is_unreachable():
  port = _closed_port()
  assert downloads.unreachable(f'https://127.0.0.1:{port}/x') == (
      f'127.0.0.1:{port}: Connection refused')


def test_a_host_that_answers_is_reachable():
  with socket.socket() as server:
    server.bind(('127.0.0.1', 0))
    server.listen()
    port = server.getsockname()[1]
    assert downloads.unreachable(f'https://127.0.0.1:{port}/x') is None


@pytest.mark.parametrize('proxy', ['HTTPS_PROXY', 'all_proxy'])
def test_behind_a_proxy_only_the_proxy_can_tell(monkeypatch, proxy):
  monkeypatch.setenv(proxy, 'http://127.0.0.1:3128')
  assert downloads.unreachable(f'https://127.0.0.1:{_closed_port()}/') is None
