"""Test setup: 8 fake CPU devices, and the golden files from ../shared.

Tests that need ../shared skip when it is absent (a user's clone) but fail under CI=true, so
CI can never pass them by skipping.
"""
import os
import pathlib
import sys

# Must happen before jax is imported anywhere: sharded code is tested on 8 fake devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

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
