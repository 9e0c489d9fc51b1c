"""The torch-free checkpoint reader against torch.load, and its refusals."""
import collections

import numpy as np
import pytest

from conftest import require_module
from efficientsam_jax.errors import UserError
from efficientsam_jax.io import torch_files


def _as_numpy(tensor):
  """torch tensor -> numpy with the same bits (bfloat16 viewed as int16)."""
  import torch
  tensor = tensor.detach().contiguous()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy()
  return tensor.numpy()


def _assert_same_bits(ours: np.ndarray, theirs: np.ndarray, name: str):
  if ours.dtype.name == "bfloat16":
    ours = ours.view(np.int16)
  assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, name
  assert ours.tobytes() == theirs.tobytes(), name


def test_fixture_bit_exact_with_torch_load(fixtures_dir):
  torch = require_module("torch")
  path = str(fixtures_dir / "efficient_sam_vitt_random.pt")
  ours = torch_files.load(path)
  theirs = torch.load(path, map_location="cpu", weights_only=True)
  assert list(ours) == ["model"] and list(ours["model"]) == list(theirs["model"])
  for name, tensor in theirs["model"].items():
    _assert_same_bits(ours["model"][name], _as_numpy(tensor), name)


def test_strides_offsets_and_dtypes(tmp_path):
  torch = require_module("torch")
  base = torch.arange(60, dtype=torch.float64).reshape(3, 4, 5)
  tensors = {
      "transposed": base.transpose(0, 2),  # strides, shared storage
      "sliced": base[1:, ::2, 1:4],  # storage offset
      "int64_tail": torch.arange(7)[2:],
      "bfloat16": torch.randn(3, 4).to(torch.bfloat16),
      "half": torch.randn(2, 2).half(),
      "bool": torch.tensor([True, False]),
      "int8": torch.ones(2, dtype=torch.int8),
      "scalar": torch.tensor(3.5),
      "empty": torch.zeros(0, 3),
      "parameter": torch.nn.Parameter(torch.ones(2)),
  }
  path = tmp_path / "t.pt"
  torch.save({"tensors": tensors, "ordered": collections.OrderedDict(a=torch.ones(1)),
              "list": [torch.ones(2), 1, "x"]}, path)
  ours = torch_files.load(str(path))
  for name, tensor in tensors.items():
    _assert_same_bits(ours["tensors"][name], _as_numpy(tensor), name)
  assert isinstance(ours["ordered"], collections.OrderedDict)
  assert ours["list"][1:] == [1, "x"]


def test_save_round_trip(tmp_path, fixtures_dir):
  require_module("torch")
  state = torch_files.load(str(fixtures_dir / "efficient_sam_vitt_random.pt"))["model"]
  path = str(tmp_path / "again.pt")
  torch_files.save({"model": state}, path)
  again = torch_files.load(path)["model"]
  assert list(again) == list(state)
  for name, value in state.items():
    _assert_same_bits(again[name], value, name)


class _RunsCode:
  def __reduce__(self):
    return (print, ("this must not run",))


def test_refuses_arbitrary_objects(tmp_path):
  torch = require_module("torch")
  path = tmp_path / "evil.pt"
  torch.save({"x": _RunsCode()}, path)
  with pytest.raises(UserError, match="refusing to load"):
    torch_files.load(str(path))


@pytest.mark.parametrize("damage", ["truncated", "random", "zeroed_pickle"])
def test_corrupted_files(tmp_path, fixtures_dir, damage):
  data = (fixtures_dir / "efficient_sam_vitt_random.pt").read_bytes()
  if damage == "truncated":
    data = data[:len(data) // 2]
  elif damage == "random":
    data = np.random.default_rng(0).bytes(4096)
  else:  # bytes inside data.pkl overwritten: the CRC check catches it
    data = data[:5000] + bytes(100) + data[5100:]
  path = tmp_path / "bad.pt"
  path.write_bytes(data)
  with pytest.raises(UserError) as info:
    torch_files.load(str(path))
  assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
  with pytest.raises(UserError, match="no such file"):
    torch_files.load(str(tmp_path / "nope.pt"))


def test_expanded_tensors_are_read_and_a_huge_stride_0_tensor_is_refused(tmp_path):
  torch = require_module("torch")
  small = torch.arange(3.0).expand(4, 3)  # stride (0, 1): 48 bytes from a 12-byte storage
  torch.save({"small": small}, tmp_path / "small.pt")
  _assert_same_bits(torch_files.load(str(tmp_path / "small.pt"))["small"],
                    small.contiguous().numpy(), "small")
  # One float32 asking for 10^6 x 10^6 of itself: 3.6 TiB, refused before any allocation.
  torch.save({"huge": torch.zeros(1).expand(10**6, 10**6)}, tmp_path / "huge.pt")
  with pytest.raises(UserError, match=r"huge.pt: tensor of size \(1000000, 1000000\) with "
                     r"stride \(0, 0\) would take 3.73e\+03 GiB from a storage of 4 bytes"):
    torch_files.load(str(tmp_path / "huge.pt"))
  # The bound is per file: many tensors that are each small still add up.
  many = {f"t{i}": torch.zeros(1).expand(2**26) for i in range(5)}  # 5 x 256 MiB
  torch.save(many, tmp_path / "many.pt")
  with pytest.raises(UserError, match="refusing more than 1 GiB"):
    torch_files.load(str(tmp_path / "many.pt"))
