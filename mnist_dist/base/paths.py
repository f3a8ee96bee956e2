"""Paths that may be local or on an object store (gs://), and why one fails.

TensorFlow's file system layer reports an unreachable store, missing
credentials and a missing object all as OpErrors whose messages bury the
cause; `cause` says it in a few words, for the one-line errors of the entry
point, and `is_transient` whether trying again can help.
"""

import errno

import tensorflow as tf

# A store that did not answer, or not in time, or cut the transfer short:
# the same write may succeed a minute later.
_TRANSIENT_OP_ERRORS = (tf.errors.UnavailableError,
                        tf.errors.DeadlineExceededError,
                        tf.errors.AbortedError)
_TRANSIENT_ERRNOS = frozenset({errno.ETIMEDOUT, errno.ECONNRESET,
                               errno.ECONNABORTED, errno.EAGAIN,
                               errno.ESTALE, errno.EHOSTUNREACH,
                               errno.ENETUNREACH, errno.ENETDOWN})


def is_remote(path: str) -> bool:
  return '://' in path


def cause(error: tf.errors.OpError) -> str:
  """What an OpError from tf.io.gfile means, in a few words."""
  message = str(error)
  if any(sign in message for sign in (
      'Could not resolve host', "Couldn't connect", 'Could not connect',
      'Connection refused', 'Timeout was reached', 'Failed to connect')):
    return 'cannot reach the store (network or DNS)'
  if isinstance(error, (tf.errors.PermissionDeniedError,
                        tf.errors.UnauthenticatedError)) or any(
                            code in message for code in ('401', '403')):
    return 'access denied (credentials or permissions)'
  if isinstance(error, tf.errors.NotFoundError):
    return 'not found'
  return message.strip().splitlines()[0]


def is_transient(error: Exception) -> bool:
  """Whether a storage error may pass if tried again (not a full disk, a
  denied access or a missing file, which stay until someone acts)."""
  if isinstance(error, tf.errors.OpError):
    return isinstance(error, _TRANSIENT_OP_ERRORS) or cause(error) == (
        'cannot reach the store (network or DNS)')
  return isinstance(error, (ConnectionError, TimeoutError)) or (
      isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS)
