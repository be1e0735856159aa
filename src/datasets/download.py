"""Atomic, verified file downloads shared by the dataset modules.

A download streams into a temporary `*.part` file next to its destination,
is checked by a caller-supplied `verify` callable and only then renamed into
place, so an interrupted or corrupt transfer never leaves a half-written file
at the destination. Only the standard library is used, hence `file://` URLs
work as well as `http(s)://` ones.
"""

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request

from absl import logging

# Bytes read per step when hashing or streaming a file.
CHUNK_BYTES = 1 << 20
# Seconds to wait before the second attempt on a mirror; doubles per attempt.
BACKOFF_SECONDS = 1.0
# Seconds between two progress messages of a running download.
PROGRESS_SECONDS = 10


class DataError(Exception):
  """A data file is missing, unreadable, corrupt or not the expected one."""


def file_digest(path, algorithm):
  """Returns the hex digest of a file, reading it in chunks.

  Args:
    path: str, the file to hash.
    algorithm: str, a `hashlib` algorithm name such as 'md5' or 'sha256'.

  Returns:
    str, the lower-case hex digest of the file's bytes.
  """
  hasher = hashlib.new(algorithm)
  with open(path, 'rb') as stream:
    for chunk in iter(lambda: stream.read(CHUNK_BYTES), b''):
      hasher.update(chunk)
  return hasher.hexdigest()


def download(urls, dest_path, verify, retries=3, timeout=60):
  """Downloads a file from the first mirror that serves a verified copy.

  Each URL is tried up to `retries` times with a short exponential backoff;
  errors that cannot go away by retrying (HTTP 4xx, a missing `file://`
  path, a copy that fails `verify`) move on to the next URL at once.

  Args:
    urls: sequence of str, the same file on several mirrors, tried in order.
    dest_path: str, where the verified file ends up. Its directory is
      created if needed.
    verify: callable taking the path of the downloaded temporary file and
      raising `DataError` if its content is wrong.
    retries: int >= 1, attempts per URL.
    timeout: float, seconds before a stalled connection is abandoned.

  Returns:
    str, `dest_path`.

  Raises:
    DataError: if no URL gave a verified copy; names the URLs tried and
      the last error.
  """
  urls = list(urls)
  dest_dir = os.path.dirname(os.path.abspath(dest_path))
  os.makedirs(dest_dir, exist_ok=True)
  errors = []
  for url in urls:
    error = _try_url(url, dest_path, verify, retries, timeout)
    if error is None:
      return dest_path
    errors.append(error)
  tried = ''.join(f'\n  {url}' for url in urls) or ' no URL'
  last = errors[-1] if errors else 'no URL to try'
  raise DataError(
      f'Could not download {dest_path}. Tried:{tried}\n'
      f'Last error: {last}\n'
      f'Download {os.path.basename(dest_path)} by hand from one of the URLs '
      f'above and place it into {dest_dir}, then rerun.')


def _try_url(url, dest_path, verify, retries, timeout):
  """Tries one URL up to `retries` times.

  Returns:
    None on success (the file is at `dest_path`), else the last exception.
  """
  error = None
  for attempt in range(retries):
    if attempt:
      delay = BACKOFF_SECONDS * 2 ** (attempt - 1)
      logging.info('Retrying %s in %.1f s (attempt %d of %d).', url, delay,
                   attempt + 1, retries)
      time.sleep(delay)
    try:
      _fetch_verified(url, dest_path, verify, timeout)
      return None
    except DataError as e:
      logging.warning('%s failed verification: %s', url, e)
      return e
    except (OSError, ValueError, http.client.HTTPException) as e:
      logging.warning('Downloading %s failed: %s', url, e)
      error = e
      if _is_permanent(e):
        return e
  return error


def _is_permanent(error):
  """Whether retrying the same URL cannot help after `error`."""
  if isinstance(error, urllib.error.HTTPError):
    return 400 <= error.code < 500
  if isinstance(error, urllib.error.URLError):
    return isinstance(error.reason, (FileNotFoundError, IsADirectoryError))
  return isinstance(error, ValueError)


def _fetch_verified(url, dest_path, verify, timeout):
  """Streams `url` into a temporary file, verifies it, moves it into place.

  The temporary file is removed whatever goes wrong.
  """
  fd, tmp_path = tempfile.mkstemp(
      dir=os.path.dirname(os.path.abspath(dest_path)),
      prefix=os.path.basename(dest_path) + '.', suffix='.part')
  try:
    with os.fdopen(fd, 'wb') as out:
      _stream(url, out, timeout)
    verify(tmp_path)
    os.replace(tmp_path, dest_path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  logging.info('Saved %s.', dest_path)


def _stream(url, out, timeout):
  """Copies the body of `url` into the binary file object `out`.

  Raises:
    OSError: on network errors or if fewer bytes arrive than announced.
  """
  logging.info('Downloading %s', url)
  with urllib.request.urlopen(url, timeout=timeout) as response:
    announced = response.headers.get('Content-Length')
    total = int(announced) if announced and announced.isdigit() else None
    received = 0
    for chunk in iter(lambda: response.read(CHUNK_BYTES), b''):
      out.write(chunk)
      received += len(chunk)
      logging.log_every_n_seconds(logging.INFO, '%s: %d of %s bytes',
                                  PROGRESS_SECONDS, url, received,
                                  total or 'unknown')
  if total is not None and received != total:
    raise OSError(f'transfer cut short: got {received} of {total} bytes')
  logging.info('Received %d bytes from %s', received, url)
