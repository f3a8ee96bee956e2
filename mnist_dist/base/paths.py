"""Paths that may be local or on an object store (gs://), and why one fails.

TensorFlow's file system layer reports an unreachable store, missing
credentials and a missing object all as OpErrors whose messages bury the
cause; `cause` says it in a few words, for the one-line errors of the entry
point.
"""

import tensorflow as tf


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
