"""Tests of datasets.download; only file:// URLs, never the network."""

import hashlib
import os
import pathlib
import urllib.error

import pytest

from datasets import download


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
  monkeypatch.setattr(download, 'BACKOFF_SECONDS', 0.0)


@pytest.fixture
def served(tmp_path):
  """A file to download: (its file:// URL, its bytes)."""
  content = bytes(range(256)) * 41
  source = tmp_path / 'server' / 'blob.bin'
  source.parent.mkdir()
  source.write_bytes(content)
  return source.as_uri(), content


def _accept(path):
  del path


def _reject(path):
  raise download.DataError(f'{path} is wrong')


def _leftovers(directory):
  return sorted(p.name for p in pathlib.Path(directory).iterdir())


def _count_urlopen(monkeypatch):
  """Wraps urlopen; returns the list of URLs it is called with."""
  calls = []
  real = download.urllib.request.urlopen

  def counting(url, *args, **kwargs):
    calls.append(url)
    return real(url, *args, **kwargs)

  monkeypatch.setattr(download.urllib.request, 'urlopen', counting)
  return calls


@pytest.mark.parametrize('algorithm', ['md5', 'sha256'])
def test_file_digest_streams_in_chunks(tmp_path, monkeypatch, algorithm):
  monkeypatch.setattr(download, 'CHUNK_BYTES', 7)
  path = tmp_path / 'f'
  path.write_bytes(b'capsules with EM routing' * 3)
  expected = hashlib.new(algorithm, path.read_bytes()).hexdigest()
  assert download.file_digest(str(path), algorithm) == expected


def test_download_places_verified_file(tmp_path, served):
  url, content = served
  dest = tmp_path / 'out' / 'sub' / 'blob.bin'
  seen = []

  def verify(path):
    seen.append(path)
    assert pathlib.Path(path).read_bytes() == content

  assert download.download([url], str(dest), verify) == str(dest)
  assert dest.read_bytes() == content
  assert len(seen) == 1
  assert os.path.dirname(seen[0]) == str(dest.parent)
  assert seen[0].endswith('.part')
  assert _leftovers(dest.parent) == ['blob.bin']


def test_missing_first_mirror_falls_back_without_retrying(
    tmp_path, served, monkeypatch):
  url, content = served
  missing = (tmp_path / 'nowhere' / 'blob.bin').as_uri()
  calls = _count_urlopen(monkeypatch)
  dest = tmp_path / 'blob.bin'
  download.download([missing, url], str(dest), _accept, retries=3)
  assert dest.read_bytes() == content
  assert calls == [missing, url]


def test_verification_failure_leaves_nothing(tmp_path, served):
  url, _ = served
  dest_dir = tmp_path / 'out'
  dest_dir.mkdir()
  dest = dest_dir / 'blob.bin'
  with pytest.raises(download.DataError) as raised:
    download.download([url, url], str(dest), _reject)
  message = str(raised.value)
  assert str(dest) in message
  assert url in message
  assert 'by hand' in message
  assert str(dest_dir) in message
  assert _leftovers(dest_dir) == []


def test_all_mirrors_failing_lists_every_url(tmp_path):
  urls = [(tmp_path / name / 'blob.bin').as_uri() for name in ('a', 'b')]
  dest = tmp_path / 'out' / 'blob.bin'
  with pytest.raises(download.DataError) as raised:
    download.download(urls, str(dest), _accept)
  message = str(raised.value)
  assert all(url in message for url in urls)
  assert 'Last error' in message
  assert not dest.exists()
  assert _leftovers(dest.parent) == []


def test_transient_error_is_retried(tmp_path, served, monkeypatch):
  url, content = served
  real = download.urllib.request.urlopen
  calls = []

  def flaky(target, *args, **kwargs):
    calls.append(target)
    if len(calls) == 1:
      raise urllib.error.URLError(ConnectionResetError('reset by peer'))
    return real(target, *args, **kwargs)

  monkeypatch.setattr(download.urllib.request, 'urlopen', flaky)
  dest = tmp_path / 'blob.bin'
  download.download([url], str(dest), _accept, retries=2)
  assert dest.read_bytes() == content
  assert calls == [url, url]


class _ShortResponse:
  """A response announcing more bytes than it delivers."""

  headers = {'Content-Length': '1000'}

  def __init__(self):
    self._body = [b'x' * 10]

  def read(self, size):
    del size
    return self._body.pop() if self._body else b''

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    return False


def test_cut_transfer_is_retried_then_reported(tmp_path, monkeypatch):
  calls = []

  def short(url, *args, **kwargs):
    calls.append(url)
    return _ShortResponse()

  monkeypatch.setattr(download.urllib.request, 'urlopen', short)
  dest = tmp_path / 'blob.bin'
  with pytest.raises(download.DataError, match='cut short'):
    download.download(['https://example.invalid/blob.bin'], str(dest),
                      _accept, retries=3)
  assert len(calls) == 3
  assert _leftovers(tmp_path) == []


def test_interrupted_download_removes_temporary_file(tmp_path, served):
  url, _ = served

  def interrupt(path):
    raise KeyboardInterrupt(path)

  with pytest.raises(KeyboardInterrupt):
    download.download([url], str(tmp_path / 'blob.bin'), interrupt)
  assert _leftovers(tmp_path) == ['server']
