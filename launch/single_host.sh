#!/usr/bin/env bash
# One machine (all its GPUs, or the CPU): set the environment, then exec the training so that
# SIGTERM/SIGINT reach Python directly (it checkpoints and exits; rerun to resume).
set -euo pipefail

PROG=launch/single_host.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_GPU_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"

usage() {
  cat <<EOF
Usage: $PROG --config=configs/NAME.py[:ARGS] --workdir=DIR [FLAGS] [-- --config.KEY=VALUE ...]

Runs python -m efficientsam_jax.main in the foreground on this machine, replacing this shell
(exec), from the repository root. Rerunning with the same DIR resumes.

Flags (each also read from the environment variable shown):
  --config CONFIG      ESAM_CONFIG        configs/NAME.py[:ARGS] (required)
  --workdir DIR        ESAM_WORKDIR       local path or gs:// (required; relative paths are
                                          made absolute)
  --gpus LIST          ESAM_GPUS          CUDA_VISIBLE_DEVICES, e.g. 0,1,2,3 (default: all)
  --cpu                ESAM_PLATFORM=cpu  JAX_PLATFORMS=cpu
  --cpu-devices N      ESAM_CPU_DEVICES   with --cpu: N fake devices
                                          (--xla_force_host_platform_device_count=N)
  --xla-flags FLAGS    ESAM_XLA_FLAGS     added to XLA_FLAGS (after the environment's XLA_FLAGS
                                          and, unless --cpu, $DEFAULT_GPU_XLA_FLAGS)
  --mem-fraction F     ESAM_MEM_FRACTION  XLA_PYTHON_CLIENT_MEM_FRACTION (default: jax's 0.75)
  --python PYTHON      ESAM_PYTHON        interpreter (default python)
  --extra ARG          ESAM_EXTRA         one override (repeatable; ESAM_EXTRA is
                                          space-separated). Arguments after -- are overrides.
  --dry-run                               print the commands instead of running them
  -h, --help                              this text

Example:
  $PROG --cpu --config=configs/sami_vitt.py:demo,smoke --workdir=/tmp/smoke -- --config.total_steps=2
  $PROG --gpus=0,1,2,3 --config=configs/sami_vitt.py --workdir=/data/runs/sami_vitt
EOF
}

# ---- arguments ---------------------------------------------------------------------------
CONFIG=${ESAM_CONFIG:-}
WORKDIR=${ESAM_WORKDIR:-}
GPUS=${ESAM_GPUS:-}
PLATFORM=${ESAM_PLATFORM:-}
CPU_DEVICES=${ESAM_CPU_DEVICES:-}
XLA_EXTRA=${ESAM_XLA_FLAGS:-}
MEM_FRACTION=${ESAM_MEM_FRACTION:-}
PYTHON=${ESAM_PYTHON:-python}
DRY_RUN=0
EXTRA=()
if [[ -n ${ESAM_EXTRA:-} ]]; then
  read -ra EXTRA <<<"$ESAM_EXTRA"
fi

while [[ $# -gt 0 ]]; do
  arg=$1
  case $arg in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --cpu) PLATFORM=cpu; shift; continue ;;
    --) shift; EXTRA+=("$@"); break ;;
  esac
  split_flag "$@"
  shift "$flag_args"
  case $key in
    --config) CONFIG=$val ;;
    --workdir) WORKDIR=$val ;;
    --gpus) GPUS=$val ;;
    --cpu-devices) CPU_DEVICES=$val ;;
    --xla-flags) XLA_EXTRA=$val ;;
    --mem-fraction) MEM_FRACTION=$val ;;
    --python) PYTHON=$val ;;
    --extra) EXTRA+=("$val") ;;
    *) die "unknown flag '$key'; see --help" ;;
  esac
done

[[ -n $CONFIG ]] || die "--config=configs/NAME.py[:ARGS] is required (or ESAM_CONFIG)"
CONFIG_FILE=${CONFIG%%:*}
[[ -f $REPO_ROOT/$CONFIG_FILE ]] || die "config file '$CONFIG_FILE' not found under $REPO_ROOT"
[[ -n $WORKDIR ]] || die "--workdir is required (or ESAM_WORKDIR)"
[[ $WORKDIR == gs://* || $WORKDIR == /* ]] || WORKDIR="$PWD/$WORKDIR"
[[ -z $PLATFORM || $PLATFORM == cpu ]] || die "ESAM_PLATFORM must be empty or cpu, got '$PLATFORM'"
[[ -z $GPUS || $GPUS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus must be a list like 0,1,2,3, got '$GPUS'"
[[ -z $GPUS || $PLATFORM != cpu ]] || die "--gpus and --cpu exclude each other"
[[ -z $CPU_DEVICES || $CPU_DEVICES =~ ^[1-9][0-9]*$ ]] || die "--cpu-devices must be a positive integer, got '$CPU_DEVICES'"
[[ -z $CPU_DEVICES || $PLATFORM == cpu ]] || die "--cpu-devices needs --cpu"
[[ -z $MEM_FRACTION || $MEM_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] \
  || die "--mem-fraction must be a number in (0, 1], got '$MEM_FRACTION'"
for a in "${EXTRA[@]}"; do
  [[ $a == --* ]] || die "override '$a' must look like --config.KEY=VALUE"
done

# ---- environment and command -------------------------------------------------------------
xla=${XLA_FLAGS:-}
if [[ $PLATFORM == cpu ]]; then
  [[ -z $CPU_DEVICES ]] || xla+=" --xla_force_host_platform_device_count=$CPU_DEVICES"
else
  xla+=" $DEFAULT_GPU_XLA_FLAGS"
fi
[[ -z $XLA_EXTRA ]] || xla+=" $XLA_EXTRA"
xla=${xla# }

ENV=(XLA_FLAGS="$xla")
[[ $PLATFORM != cpu ]] || ENV+=(JAX_PLATFORMS=cpu)
[[ -z $GPUS ]] || ENV+=(CUDA_VISIBLE_DEVICES="$GPUS")
[[ -z $MEM_FRACTION ]] || ENV+=(XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION")
CMD=(env "${ENV[@]}" "$PYTHON" -m efficientsam_jax.main --config="$CONFIG" --workdir="$WORKDIR"
     "${EXTRA[@]}")

if [[ $DRY_RUN == 1 ]]; then
  quote_all cd "$REPO_ROOT"; printf '\n'
  quote_all exec "${CMD[@]}"; printf '\n'
  exit 0
fi
cd "$REPO_ROOT"
exec "${CMD[@]}"
