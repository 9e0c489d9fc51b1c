"""Reading PyTorch checkpoint files.

Placeholder implementation through torch; to be replaced by a torch-free reader of the zip
pickle format (issue 3) so that training can read a SAM teacher file without torch.
"""


def load(path: str):
  try:
    import torch
  except ImportError as e:
    raise RuntimeError(f"reading {path} needs torch (pip install torch==2.13.0)") from e
  obj = torch.load(path, map_location="cpu", weights_only=True)
  return _to_numpy(obj)


def _to_numpy(obj):
  import torch
  if isinstance(obj, torch.Tensor):
    return obj.numpy()
  if isinstance(obj, dict):
    return {k: _to_numpy(v) for k, v in obj.items()}
  return obj
