"""Hardware a train step can be compiled for without having it: TPU slices (libtpu compiles
for any topology on any host, `pip install -e ".[tpu]"`) and GPU machines (jax's CUDA plugin
compiles for a described GPU, `pip install -e ".[gpu_compile]"`).

`resolve("v5litepod-64")` -> a `Target`: the compile-only devices of that slice and the facts
the compile report needs (HBM, peak bf16 FLOP/s and host cores per chip kind, in `CHIPS`;
sources in docs/tpu.md). Names: Cloud TPU accelerator types (`v4-128`, `v5p-128`,
`v5litepod-64` or `v5e-64`, `v6e-64`; v4/v5p count TensorCores, two per chip, v5e/v6e count
chips), JAX topology names (`v5e:8x8`, `v4:4x4x4`, `v5p:4x4x4`, `v6e:8x8`: the chip grid), and
GPU machines `h100:8` (one host with 8 GPUs) or `h100:4x8` (4 hosts with 8 each; also
`h200`, `a100`).
"""
import dataclasses
import os
import re

from efficientsam_jax.errors import UserError

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip kind: memory, peak dense bf16 FLOP/s, and the vCPUs of the host VM
  that drives `chips_per_host` of them (what feeds the input pipeline)."""
  hbm_bytes: int
  peak_flops: float
  host_cores: int
  chips_per_host: int


CHIPS = {
    "v4": Chip(32 * GiB, 275e12, 240, 4),
    "v5e": Chip(16 * GiB, 197e12, 112, 4),
    "v5p": Chip(95 * GiB, 459e12, 208, 4),
    "v6e": Chip(32 * GiB, 918e12, 180, 4),
    # GPUs: device memory as the CUDA driver reports it; hosts are Google Cloud's 8-GPU VMs
    # (a2-ultragpu-8g, a3-highgpu-8g, a3-ultragpu-8g).
    "a100": Chip(81_251 * 2**20, 312e12, 96, 8),
    "h100": Chip(80_994 * 2**20, 989e12, 208, 8),
    "h200": Chip(143_771 * 2**20, 989e12, 224, 8),
}

# Chip grids of the slice sizes Cloud TPU offers (chips -> grid), per topology dimension.
_GRIDS_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_GRIDS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16",
             6144: "16x16x24"}
_CLOUD_PREFIX = {"v4": "v4", "v5p": "v5p", "v5e": "v5litepod", "v6e": "v6e"}
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}

# What the CUDA device properties of each GPU say, for XLA's GpuTargetConfig.
_GPU_PROPERTIES = {
    "a100": dict(name="NVIDIA A100-SXM4-80GB", sms=108, cc=(8, 0), clock_ghz=1.41,
                 bandwidth=2_039_000_000_000, l2=41_943_040, smem_per_sm=167_936,
                 smem_optin=166_912, fpus=64),
    "h100": dict(name="NVIDIA H100 80GB HBM3", sms=132, cc=(9, 0), clock_ghz=1.98,
                 bandwidth=3_352_320_000_000, l2=52_428_800, smem_per_sm=233_472,
                 smem_optin=232_448, fpus=128),
    "h200": dict(name="NVIDIA H200", sms=132, cc=(9, 0), clock_ghz=1.98,
                 bandwidth=4_800_000_000_000, l2=52_428_800, smem_per_sm=233_472,
                 smem_optin=232_448, fpus=128),
}


@dataclasses.dataclass
class Target:
  """A slice or machine to compile for: `devices` are compile-only (one per chip)."""
  name: str  # as the user gave it
  slice_name: str  # Cloud name (v5litepod-64) or the GPU machine (h100:8)
  topology: str  # JAX's topology name (v5e:8x8) or the GPU topology (1x1x8)
  kind: str  # key of CHIPS
  platform: str  # "tpu" | "gpu"
  devices: list

  @property
  def chip(self) -> Chip:
    return CHIPS[self.kind]

  @property
  def chips(self) -> int:
    return len(self.devices)

  @property
  def hosts(self) -> int:
    return len({d.process_index for d in self.devices})


def _parse_tpu(name: str):
  """-> (kind, grid) or None."""
  m = re.fullmatch(r"(v4|v5p|v5litepod|v5e|v6e)-(\d+)", name)
  if m:
    kind = {"v5litepod": "v5e"}.get(m.group(1), m.group(1))
    chips, rest = divmod(int(m.group(2)), _CORES_PER_CHIP[kind])
    grids = _GRIDS_3D if _CORES_PER_CHIP[kind] == 2 else _GRIDS_2D
    if rest or chips not in grids:
      raise UserError(f"compile_for {name}: no {kind} slice of that size; sizes: "
                      + ", ".join(f"{_CLOUD_PREFIX[kind]}-{c * _CORES_PER_CHIP[kind]}"
                                  for c in grids))
    return kind, grids[chips]
  m = re.fullmatch(r"(v4|v5p|v5|v5e|v6e):(\d+(?:x\d+)+)", name)
  if m:
    return {"v5": "v5p"}.get(m.group(1), m.group(1)), m.group(2)
  return None


def _tpu_target(name: str, kind: str, grid: str) -> Target:
  try:
    from jax.experimental import topologies
    import libtpu  # noqa: F401  (only to say what is missing)
  except ImportError:
    raise UserError(f"compile_for {name} needs libtpu: pip install -e \".[tpu]\"") from None
  # One JAX device per chip, as a TPU VM has: v4 chips otherwise show as two devices.
  extra = {"chip_config_name": "megacore"} if kind == "v4" else {}
  # Compile-only: another process (a test, a second check) may hold libtpu too.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    topology = topologies.get_topology_desc(f"{kind}:{grid}", platform="tpu", **extra)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"compile_for {name}: libtpu has no topology {kind}:{grid} "
                    f"({str(e).splitlines()[0]})") from None
  chips = len(topology.devices)
  return Target(name, f"{_CLOUD_PREFIX[kind]}-{chips * _CORES_PER_CHIP[kind]}",
                f"{kind}:{grid}", kind, "tpu", list(topology.devices))


def gpu_target_config(kind: str) -> str:
  """XLA's GpuTargetConfigProto (text) for one GPU kind."""
  p, chip = _GPU_PROPERTIES[kind], CHIPS[kind]
  info = dict(threads_per_block_limit=1024, threads_per_warp=32,
              shared_memory_per_block=49152, shared_memory_per_core=p["smem_per_sm"],
              threads_per_core_limit=2048, core_count=p["sms"], fpus_per_core=p["fpus"],
              block_dim_limit_x=2**31 - 1, block_dim_limit_y=65535, block_dim_limit_z=65535,
              memory_bandwidth=p["bandwidth"], l2_cache_size=p["l2"],
              clock_rate_ghz=p["clock_ghz"], device_memory_size=chip.hbm_bytes,
              shared_memory_per_block_optin=p["smem_optin"], registers_per_core_limit=65536,
              registers_per_block_limit=65536)
  fields = " ".join(f"{k}: {v}" for k, v in info.items())
  major, minor = p["cc"]
  return (f"gpu_device_info {{ {fields} cuda_compute_capability {{ major: {major} "
          f"minor: {minor} }} }} platform_name: \"CUDA\" dnn_version_info {{ major: 9 minor: 8 }} "
          f"runtime_version {{ major: 12 minor: 8 }} device_description_str: \"{p['name']}\"")


def _gpu_target(name: str, kind: str, hosts: int, per_host: int) -> Target:
  import jax
  from jax.experimental import topologies
  try:
    topology = topologies.get_topology_desc(
        platform="cuda", target_config=gpu_target_config(kind),
        topology=f"1x{hosts}x{per_host}")
  except Exception as e:  # pylint: disable=broad-except
    hint = ("" if jax.config.jax_platforms == "cpu" else
            "; without a GPU set JAX_PLATFORMS=cpu")
    raise UserError(f"compile_for {name} needs jax's CUDA plugin: pip install -e "
                    f"\".[gpu_compile]\"{hint} ({str(e).splitlines()[0]})") from None
  return Target(name, f"{kind}:{hosts}x{per_host}" if hosts > 1 else f"{kind}:{per_host}",
                f"1x{hosts}x{per_host}", kind, "gpu", list(topology.devices))


def resolve(name: str) -> Target:
  """The Target called `name` (module docstring); UserError for a name it does not know."""
  name = name.strip()
  parsed = _parse_tpu(name.lower())
  if parsed:
    return _tpu_target(name, *parsed)
  m = re.fullmatch(r"(a100|h100|h200):(?:(\d+)x)?(\d+)", name.lower())
  if m:
    return _gpu_target(name, m.group(1), int(m.group(2) or 1), int(m.group(3)))
  raise UserError(f"compile_for {name!r}: not a target; e.g. v5litepod-64, v5e-64, v5p-128, "
                  "v4-128, v6e-64, v5e:8x8, v4:4x4x4, h100:8, h100:4x8")
