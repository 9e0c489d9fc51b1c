#!/usr/bin/env bash
# Multi-node GPU training under Slurm: writes a batch script and submits it with sbatch.
# One task per node owns all of that node's GPUs; jax's SlurmCluster finds the others.
set -euo pipefail

PROG=launch/slurm_gpu.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEFAULT_XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=true"

usage() {
  cat <<EOF
Usage: $PROG --config=configs/NAME.py[:ARGS] --workdir=DIR [FLAGS] [-- --config.KEY=VALUE ...]

Writes a Slurm batch script (one srun task per node, all GPUs of the node in that task) and
submits it with sbatch. Submitting the same command again resumes from DIR's latest
checkpoint. Before the time limit the training gets SIGTERM (it checkpoints and exits) and the
job requeues itself; a preempted job is requeued by Slurm (--requeue) and resumes the same way.

Flags (each also read from the environment variable shown):
  --config CONFIG        ESAM_CONFIG         configs/NAME.py[:ARGS] (required)
  --workdir DIR          ESAM_WORKDIR        shared by all nodes: a shared filesystem or gs://
                                             (required; relative paths are made absolute)
  --nodes N              ESAM_NODES          nodes (default 1)
  --gpus-per-node G      ESAM_GPUS_PER_NODE  GPUs per node (default 8)
  --cpus-per-task C      ESAM_CPUS_PER_TASK  CPUs for each node's process (default: Slurm's)
  --time T               ESAM_TIME           time limit, e.g. 24:00:00 (default: partition's)
  --partition P          ESAM_PARTITION
  --account A            ESAM_ACCOUNT
  --job-name NAME        ESAM_JOB_NAME       default esam-CONFIG_STEM
  --grace SECONDS        ESAM_GRACE          SIGTERM this long before the time limit (default 120)
  --python PYTHON        ESAM_PYTHON         interpreter on the nodes (default python)
  --setup CMD            ESAM_SETUP          a line run before srun, e.g.
                                             --setup='source ~/venvs/esam/bin/activate'
                                             (repeatable; ESAM_SETUP is one line)
  --xla-flags FLAGS      ESAM_XLA_FLAGS      added to XLA_FLAGS after the default
                                             $DEFAULT_XLA_FLAGS
  --mem-fraction F       ESAM_MEM_FRACTION   XLA_PYTHON_CLIENT_MEM_FRACTION (default: jax's 0.75)
  --log-dir DIR          ESAM_LOG_DIR        batch script and job output (default
                                             REPO/slurm-logs; output appended across requeues)
  --extra ARG            ESAM_EXTRA          one override (repeatable; ESAM_EXTRA is
                                             space-separated). Arguments after -- are overrides.
  --no-submit                                write the batch script, do not call sbatch
  --dry-run                                  print the commands (file contents as a heredoc)
  -h, --help                                 this text

Example:
  $PROG --nodes=4 --gpus-per-node=8 --time=24:00:00 --partition=gpu \\
      --setup='source ~/venvs/esam/bin/activate' \\
      --config=configs/sami_vitt.py --workdir=/shared/runs/sami_vitt \\
      -- --config.data.tfds_data_dir=/shared/tfds
EOF
}

# ---- arguments ---------------------------------------------------------------------------
CONFIG=${ESAM_CONFIG:-}
WORKDIR=${ESAM_WORKDIR:-}
NODES=${ESAM_NODES:-1}
GPUS=${ESAM_GPUS_PER_NODE:-8}
CPUS=${ESAM_CPUS_PER_TASK:-}
TIME=${ESAM_TIME:-}
PARTITION=${ESAM_PARTITION:-}
ACCOUNT=${ESAM_ACCOUNT:-}
JOB_NAME=${ESAM_JOB_NAME:-}
GRACE=${ESAM_GRACE:-120}
PYTHON=${ESAM_PYTHON:-python}
XLA_EXTRA=${ESAM_XLA_FLAGS:-}
MEM_FRACTION=${ESAM_MEM_FRACTION:-}
LOG_DIR=${ESAM_LOG_DIR:-$REPO_ROOT/slurm-logs}
SUBMIT=1
DRY_RUN=0
SETUP=()
[[ -z ${ESAM_SETUP:-} ]] || SETUP+=("$ESAM_SETUP")
EXTRA=()
if [[ -n ${ESAM_EXTRA:-} ]]; then
  read -ra EXTRA <<<"$ESAM_EXTRA"
fi

while [[ $# -gt 0 ]]; do
  arg=$1
  case $arg in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift; continue ;;
    --no-submit) SUBMIT=0; shift; continue ;;
    --) shift; EXTRA+=("$@"); break ;;
  esac
  split_flag "$@"
  shift "$flag_args"
  case $key in
    --config) CONFIG=$val ;;
    --workdir) WORKDIR=$val ;;
    --nodes) NODES=$val ;;
    --gpus-per-node) GPUS=$val ;;
    --cpus-per-task) CPUS=$val ;;
    --time) TIME=$val ;;
    --partition) PARTITION=$val ;;
    --account) ACCOUNT=$val ;;
    --job-name) JOB_NAME=$val ;;
    --grace) GRACE=$val ;;
    --python) PYTHON=$val ;;
    --setup) SETUP+=("$val") ;;
    --xla-flags) XLA_EXTRA=$val ;;
    --mem-fraction) MEM_FRACTION=$val ;;
    --log-dir) LOG_DIR=$val ;;
    --extra) EXTRA+=("$val") ;;
    *) die "unknown flag '$key'; see --help" ;;
  esac
done

[[ -n $CONFIG ]] || die "--config=configs/NAME.py[:ARGS] is required (or ESAM_CONFIG)"
CONFIG_FILE=${CONFIG%%:*}
[[ -f $REPO_ROOT/$CONFIG_FILE ]] || die "config file '$CONFIG_FILE' not found under $REPO_ROOT"
[[ -n $WORKDIR ]] || die "--workdir is required (or ESAM_WORKDIR)"
[[ $WORKDIR == gs://* || $WORKDIR == /* ]] || WORKDIR="$PWD/$WORKDIR"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got '$NODES'"
[[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer, got '$GPUS'"
[[ -z $CPUS || $CPUS =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task must be a positive integer, got '$CPUS'"
[[ $GRACE =~ ^[1-9][0-9]*$ ]] || die "--grace must be a positive number of seconds, got '$GRACE'"
[[ -z $MEM_FRACTION || $MEM_FRACTION =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] \
  || die "--mem-fraction must be a number in (0, 1], got '$MEM_FRACTION'"
[[ -z $TIME || $TIME =~ ^[0-9:-]+$ ]] || die "--time must look like [D-]HH:MM:SS or minutes, got '$TIME'"
for a in "${EXTRA[@]}"; do
  [[ $a == --* ]] || die "override '$a' must look like --config.KEY=VALUE"
done
if [[ -z $JOB_NAME ]]; then
  JOB_NAME="esam-$(basename "$CONFIG_FILE" .py)"
fi
[[ $JOB_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job-name may hold letters, digits, '_', '.', '-' only"
[[ $LOG_DIR == /* ]] || LOG_DIR="$PWD/$LOG_DIR"
SCRIPT="$LOG_DIR/$JOB_NAME.sbatch"

XLA="$DEFAULT_XLA_FLAGS${XLA_EXTRA:+ $XLA_EXTRA}"
DEVICE_IDS=$(seq -s, 0 $((GPUS - 1)))

# ---- the batch script --------------------------------------------------------------------
batch_script() {
  echo "#!/bin/bash"
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=1"
  echo "#SBATCH --gpus-per-node=$GPUS"
  [[ -z $CPUS ]] || echo "#SBATCH --cpus-per-task=$CPUS"
  [[ -z $TIME ]] || echo "#SBATCH --time=$TIME"
  [[ -z $PARTITION ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z $ACCOUNT ]] || echo "#SBATCH --account=$ACCOUNT"
  echo "#SBATCH --signal=B:USR1@$GRACE"
  echo "#SBATCH --requeue"
  echo "#SBATCH --open-mode=append"
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  echo "#SBATCH --chdir=$REPO_ROOT"
  cat <<EOF
# Written by $PROG. Submitting it again, or a requeue, resumes from the workdir.
set -uo pipefail
EOF
  local line
  for line in "${SETUP[@]}"; do
    echo "$line"
  done
  cat <<EOF
export XLA_FLAGS=$(quote "$XLA")
# jax's Slurm detection gives each process only GPU \$SLURM_LOCALID; this task owns them all.
export JAX_LOCAL_DEVICE_IDS=$DEVICE_IDS
EOF
  [[ -z $MEM_FRACTION ]] || echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION"
  cat <<'EOF'
requeue=0
# USR1 = the time limit is near: SIGTERM to the training on every node (not to this shell),
# which checkpoints and exits; then requeue. TERM = preempted or scancel: Slurm signals the
# training itself, so this shell only keeps waiting for it.
trap 'echo "time limit near: SIGTERM to the training, then requeue"; requeue=1; scancel --signal=TERM "$SLURM_JOB_ID"' USR1
trap 'echo "SIGTERM: waiting for the training to checkpoint"' TERM
EOF
  echo "srun --ntasks-per-node=1 $(quote_all "$PYTHON" -m efficientsam_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}") &"
  cat <<'EOF'
pid=$!
# A trapped signal interrupts `wait`; keep waiting until srun itself has exited.
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
wait "$pid"; rc=$?
if [[ $requeue == 1 ]]; then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
EOF
}

# ---- write and submit --------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
  run_cmd mkdir -p "$LOG_DIR"
  echo "cat > $(quote "$SCRIPT") <<'EOF'"
  batch_script
  echo "EOF"
  [[ $SUBMIT == 0 ]] || run_cmd sbatch "$SCRIPT"
  exit 0
fi
if [[ $SUBMIT == 1 ]] && ! command -v sbatch >/dev/null; then
  die "sbatch not found on PATH (run this on a Slurm login node, or use --no-submit / --dry-run)"
fi
mkdir -p "$LOG_DIR"
batch_script >"$SCRIPT"
echo "wrote $SCRIPT"
if [[ $SUBMIT == 1 ]]; then
  sbatch "$SCRIPT"
fi
