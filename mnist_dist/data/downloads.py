"""Whether TFDS can download what it needs, told in seconds, not minutes.

Offline, TFDS retries each of MNIST's four downloads for almost a minute
(`Retrying ... NameResolutionError`) before it fails. One connection
attempt to its download host says the same at once: a name that does not
resolve, a refused connection or an unreachable network mean no download
can succeed. A network that is slow but working (a connection that times
out here) is left to TFDS, which still downloads as it would, and so is
one behind a proxy (HTTPS_PROXY and the like), which only the proxy can
answer for.
"""

import errno
import os
import socket
import urllib.parse

CONNECT_TIMEOUT_S = 10
_PROXY_VARIABLES = ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy')
_OFFLINE_ERRNOS = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNREFUSED)


def _on_disk(builder, url: str, url_info) -> bool:
  """Whether TFDS will find url's file without downloading it: in its
  manual folder, or as a finished download (tests/test_tfds.py puts both)."""
  # Imported here, as by input_pipeline: only the tfds source needs TFDS.
  from tensorflow_datasets.core.download import resource
  downloads = os.path.join(str(builder.data_dir_root), 'downloads')
  return (os.path.exists(os.path.join(downloads, 'manual',
                                      url_info.filename)) or
          os.path.exists(os.path.join(downloads, builder.name,
                                      resource.get_dl_fname(
                                          url, url_info.checksum))))


def unreachable(url: str, *, timeout_s: float = CONNECT_TIMEOUT_S
                ) -> str | None:
  """Why url's host cannot be reached at all, or None if it may be."""
  if any(os.environ.get(name) for name in _PROXY_VARIABLES):
    return None
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == 'https' else 80)
  try:
    socket.create_connection((parsed.hostname, port),
                             timeout=timeout_s).close()
  except socket.gaierror as e:
    return f'{parsed.hostname} does not resolve ({e.strerror})'
  except OSError as e:  # socket.timeout is one: slow, perhaps working.
    if e.errno in _OFFLINE_ERRNOS:
      return f'{parsed.hostname}:{port}: {os.strerror(e.errno)}'
  return None


def why_no_download(builder) -> str | None:
  """Why builder's missing files cannot be downloaded, or None: nothing is
  missing, or its download host answers (or may)."""
  root = str(builder.data_dir_root)
  if os.path.exists(root) and not os.path.isdir(root):
    return None  # No download could go there: TFDS says so, at once.
  missing = [url for url, url_info in builder.url_infos.items()
             if not _on_disk(builder, url, url_info)]
  return unreachable(missing[0]) if missing else None
