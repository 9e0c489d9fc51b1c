#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create -> install -> run (resume) -> stop -> delete.
# Every step is one or more `gcloud compute tpus tpu-vm` commands; --dry-run prints them.
set -euo pipefail

PROG=launch/tpu_pod.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<EOF
Usage: $PROG SUBCOMMAND [FLAGS] [-- --config.KEY=VALUE ...]

Runs efficientsam_jax training on a Cloud TPU VM pod slice with gcloud.

Subcommands:
  create    gcloud compute tpus tpu-vm create (needs --type, --version)
  install   copy this checkout (git archive HEAD) or clone --repo onto every worker, then
            make a Python venv there and pip-install the repo with "jax[tpu]"
  run       check on this machine that the train step fits the slice (compiles it for
            --type, or the slice's type from gcloud; needs pip install -e ".[tpu]" here),
            then start the training command on every worker (--worker=all), detached with
            setsid+nohup, one log file per worker; refuses if it is already running there
  resume    the same as run: the same workdir resumes from its latest checkpoint
  stop      send SIGTERM to the training process on every worker (it checkpoints and exits)
  logs      tail -F the log of one worker (--worker, default 0)
  delete    gcloud compute tpus tpu-vm delete --quiet

Flags (each also read from the environment variable shown):
  --name NAME          ESAM_TPU_NAME      TPU name (required)
  --zone ZONE          ESAM_ZONE          zone, e.g. us-central2-b (required)
  --project PROJECT    ESAM_PROJECT       GCP project (default: gcloud's configured one)
  --type TYPE          ESAM_TPU_TYPE      accelerator type, e.g. v4-32, v5p-64 (create)
  --version VERSION    ESAM_TPU_VERSION   TPU runtime version (create), e.g. tpu-ubuntu2204-base
                                          (v4), v2-alpha-tpuv5 (v5p), v2-alpha-tpuv5-lite (v5e),
                                          v2-alpha-tpuv6e (v6e); list them with
                                          gcloud compute tpus tpu-vm versions list --zone=ZONE
  --spot               ESAM_PROVISIONING=spot         create a Spot TPU
  --preemptible        ESAM_PROVISIONING=preemptible  create a preemptible TPU
  --repo URL           ESAM_REPO          install: git clone URL instead of copying this checkout
  --ref REF            ESAM_REF           install: branch/tag/commit (default HEAD)
  --python-version V   ESAM_PYTHON_VERSION  install: venv Python (default 3.11; jax needs >=3.11)
  --config CONFIG      ESAM_CONFIG        configs/NAME.py[:ARGS] (run/resume; required there)
  --workdir GS_PATH    ESAM_WORKDIR       gs:// workdir (default gs://BUCKET/CONFIG_STEM)
  --bucket BUCKET      ESAM_BUCKET        bucket for the default workdir (must exist)
  --extra ARG          ESAM_EXTRA         one override, e.g. --extra=--config.batch_size=1024;
                                          repeatable; ESAM_EXTRA is space-separated. Arguments
                                          after -- are overrides too.
  --worker N           ESAM_WORKER        logs: which worker (default 0)
  --python PYTHON      ESAM_PYTHON        run/resume: local Python of the precheck (default python3)
  --skip-precheck      ESAM_SKIP_PRECHECK=1  run/resume: start without compiling here first
  --dry-run                               print the commands instead of running them
  -h, --help                              this text

Remote layout (in each worker's home): efficientsam_jax/ (code), esam-venv/ (Python),
esam-logs/train-workerN.log (appended across runs), esam-logs/train.pid.

Example:
  $PROG create  --name=sami --zone=us-central2-b --type=v4-32 --version=tpu-ubuntu2204-base --spot
  $PROG install --name=sami --zone=us-central2-b
  $PROG run     --name=sami --zone=us-central2-b --config=configs/sami_vitt.py \\
                --bucket=my-bucket -- --config.data.tfds_data_dir=gs://my-bucket/tfds
  $PROG delete  --name=sami --zone=us-central2-b
EOF
}

# ---- arguments ---------------------------------------------------------------------------
[[ $# -gt 0 ]] || die "missing SUBCOMMAND (create, install, run, resume, stop, logs, delete); see --help"
case $1 in
  -h|--help) usage; exit 0 ;;
  create|install|run|resume|stop|logs|delete) SUBCOMMAND=$1; shift ;;
  *) die "unknown subcommand '$1' (create, install, run, resume, stop, logs, delete)" ;;
esac

NAME=${ESAM_TPU_NAME:-}
ZONE=${ESAM_ZONE:-}
PROJECT=${ESAM_PROJECT:-}
TYPE=${ESAM_TPU_TYPE:-}
VERSION=${ESAM_TPU_VERSION:-}
PROVISIONING=${ESAM_PROVISIONING:-standard}
REPO=${ESAM_REPO:-}
REF=${ESAM_REF:-HEAD}
PYTHON_VERSION=${ESAM_PYTHON_VERSION:-3.11}
CONFIG=${ESAM_CONFIG:-}
WORKDIR=${ESAM_WORKDIR:-}
BUCKET=${ESAM_BUCKET:-}
WORKER=${ESAM_WORKER:-0}
LOCAL_PYTHON=${ESAM_PYTHON:-python3}
SKIP_PRECHECK=${ESAM_SKIP_PRECHECK:-0}
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
    --spot) PROVISIONING=spot; shift; continue ;;
    --preemptible) PROVISIONING=preemptible; shift; continue ;;
    --skip-precheck) SKIP_PRECHECK=1; shift; continue ;;
    --) shift; EXTRA+=("$@"); break ;;
  esac
  split_flag "$@"
  shift "$flag_args"
  case $key in
    --name) NAME=$val ;;
    --zone) ZONE=$val ;;
    --project) PROJECT=$val ;;
    --type) TYPE=$val ;;
    --version) VERSION=$val ;;
    --repo) REPO=$val ;;
    --ref) REF=$val ;;
    --python-version) PYTHON_VERSION=$val ;;
    --config) CONFIG=$val ;;
    --workdir) WORKDIR=$val ;;
    --bucket) BUCKET=$val ;;
    --extra) EXTRA+=("$val") ;;
    --worker) WORKER=$val ;;
    --python) LOCAL_PYTHON=$val ;;
    *) die "unknown flag '$key'; see --help" ;;
  esac
done

[[ -n $NAME ]] || die "--name is required (or set ESAM_TPU_NAME)"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name '$NAME' must be lowercase letters, digits and dashes"
[[ -n $ZONE ]] || die "--zone is required (or set ESAM_ZONE)"
case $PROVISIONING in standard|spot|preemptible) ;; *) die "ESAM_PROVISIONING must be standard, spot or preemptible" ;; esac

GCLOUD_WHERE=(--zone="$ZONE")
[[ -z $PROJECT ]] || GCLOUD_WHERE+=(--project="$PROJECT")

REMOTE_DIR=efficientsam_jax
VENV=esam-venv
LOGS=esam-logs

# ---- subcommands -------------------------------------------------------------------------
do_create() {
  [[ -n $TYPE ]] || die "create needs --type (e.g. v4-32, v5p-64) or ESAM_TPU_TYPE"
  [[ $TYPE =~ ^v[0-9]+[a-z]*(pod)?-[0-9]+$ ]] || die "--type '$TYPE' does not look like an accelerator type (e.g. v4-32)"
  [[ -n $VERSION ]] || die "create needs --version (TPU runtime, e.g. tpu-ubuntu2204-base); see --help"
  local cmd=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_WHERE[@]}"
             --accelerator-type="$TYPE" --version="$VERSION")
  [[ $PROVISIONING == standard ]] || cmd+=(--"$PROVISIONING")
  run_cmd "${cmd[@]}"
}

do_install() {
  # jax >= 0.7 needs Python >= 3.11 and the TPU images ship older ones, so a venv made by uv
  # (which fetches that Python) holds the repo and jax[tpu].
  local setup_env="python3 -m pip install --user --quiet uv || python3 -m pip install --user --quiet --break-system-packages uv
\$HOME/.local/bin/uv venv --allow-existing --python $PYTHON_VERSION $VENV
\$HOME/.local/bin/uv pip install --python $VENV/bin/python -c $REMOTE_DIR/constraints.txt -e ./$REMOTE_DIR 'jax[tpu]'"
  local fetch
  if [[ -n $REPO ]]; then
    fetch="rm -rf $REMOTE_DIR
git clone --quiet $(quote "$REPO") $REMOTE_DIR
git -C $REMOTE_DIR checkout --quiet $(quote "$REF")"
  else
    git -C "$REPO_ROOT" rev-parse --verify --quiet "$REF^{commit}" >/dev/null \
      || die "--ref '$REF' is not a commit of $REPO_ROOT"
    local tarball="${TMPDIR:-/tmp}/efficientsam_jax-$NAME.tar.gz"
    run_cmd git -C "$REPO_ROOT" archive --format=tar.gz --output="$tarball" "$REF"
    run_cmd gcloud compute tpus tpu-vm scp "$tarball" "$NAME:$REMOTE_DIR.tar.gz" --worker=all \
      "${GCLOUD_WHERE[@]}"
    fetch="rm -rf $REMOTE_DIR
mkdir -p $REMOTE_DIR
tar -xzf $REMOTE_DIR.tar.gz -C $REMOTE_DIR"
  fi
  local remote
  remote="set -e; ${fetch//$'\n'/; }; ${setup_env//$'\n'/; }"
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${GCLOUD_WHERE[@]}" --command="$remote"
}

do_run() {
  [[ -n $CONFIG ]] || die "$SUBCOMMAND needs --config=configs/NAME.py[:ARGS] (or ESAM_CONFIG)"
  local config_file=${CONFIG%%:*}
  [[ -f $REPO_ROOT/$config_file ]] || die "config file '$config_file' not found under $REPO_ROOT"
  if [[ -z $WORKDIR ]]; then
    [[ -n $BUCKET ]] || die "$SUBCOMMAND needs --workdir=gs://... or --bucket (or ESAM_WORKDIR / ESAM_BUCKET)"
    local stem variant=""
    stem=$(basename "$config_file" .py)
    [[ $CONFIG != *:* ]] || variant="_${CONFIG#*:}"
    WORKDIR="gs://${BUCKET#gs://}/$stem${variant//,/_}"
  fi
  [[ $WORKDIR == gs://?* ]] || die "--workdir must be a gs:// path shared by all workers, got '$WORKDIR'"
  local a
  for a in "${EXTRA[@]}"; do
    [[ $a == --* ]] || die "override '$a' must look like --config.KEY=VALUE"
  done

  precheck
  local train=("$VENV/bin/python" -m efficientsam_jax.main --config="$CONFIG" --workdir="$WORKDIR"
               "${EXTRA[@]}")
  local train_q
  train_q=$(quote_all "${train[@]}")
  # main.py calls jax.distributed.initialize() only when it sees a cluster; the GKE variable
  # it checks (TPU_WORKER_HOSTNAMES) is not set on a TPU VM created by gcloud, so export the
  # coordinator (worker 0, the first of worker-network-endpoints, port 8482: the address jax's
  # GceTpuCluster would pick); jax then reads process count and id from the same metadata.
  local md="curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes"
  local remote
  remote="set -e; mkdir -p $LOGS; "
  remote+="if [ -f $LOGS/train.pid ] && kill -0 \"\$(cat $LOGS/train.pid)\" 2>/dev/null; then "
  remote+="echo \"training already running on \$(hostname) (pid \$(cat $LOGS/train.pid)); use stop first\" >&2; exit 1; fi; "
  remote+="w=\$($md/agent-worker-number); ep=\$($md/worker-network-endpoints); first=\${ep%%,*}; "
  remote+="export JAX_COORDINATOR_ADDRESS=\${first##*:}:8482; "
  remote+="cd $REMOTE_DIR; "
  remote+="setsid nohup ../$train_q >>../$LOGS/train-worker\$w.log 2>&1 </dev/null & "
  remote+="echo \$! >../$LOGS/train.pid; echo \"worker \$w: started pid \$!, log ~/$LOGS/train-worker\$w.log\""
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${GCLOUD_WHERE[@]}" --command="$remote"
}

# Compiles the train step for the slice on this machine (python -m efficientsam_jax.main
# --config.compile_for=TYPE) and stops with its report when it does not fit: minutes here
# instead of a failed start on a booked pod.
precheck() {
  [[ $SKIP_PRECHECK == 1 ]] && return 0
  local type=$TYPE
  if [[ -z $type && $DRY_RUN == 1 ]]; then
    # Printed for the reader, not run: the type gcloud would report.
    # shellcheck disable=SC2016
    type='$(gcloud compute tpus tpu-vm describe '"$NAME"' --format=value(acceleratorType))'
  elif [[ -z $type ]]; then
    type=$(gcloud compute tpus tpu-vm describe "$NAME" "${GCLOUD_WHERE[@]}" \
             --format='value(acceleratorType)') \
      || die "cannot read the accelerator type of '$NAME' (pass --type, or --skip-precheck)"
  fi
  local scratch="${TMPDIR:-/tmp}/esam-precheck-XXXXXX"
  [[ $DRY_RUN == 1 ]] || scratch=$(mktemp -d "$scratch")
  local check=("$LOCAL_PYTHON" -m efficientsam_jax.main --config="$CONFIG" --workdir="$scratch"
               "${EXTRA[@]}" --config.compile_for="$type")
  if [[ $DRY_RUN == 1 ]]; then
    printf 'cd %s && ' "$(quote "$REPO_ROOT")"
    quote_all "${check[@]}"
    printf '\n'
    return 0
  fi
  echo "$PROG: compiling the train step for $type on this machine (--skip-precheck skips)" >&2
  local status=0
  (cd "$REPO_ROOT" && "${check[@]}") || status=$?
  rm -rf "$scratch"
  [[ $status == 0 ]] || die "precheck failed (status $status, the report is above): the train step would not run on $type; nothing was started on the pod"
}

do_stop() {
  local remote="if [ -f $LOGS/train.pid ] && kill -TERM \"\$(cat $LOGS/train.pid)\" 2>/dev/null; "
  remote+="then echo \"\$(hostname): sent SIGTERM\"; else echo \"\$(hostname): not running\"; fi"
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" --worker=all "${GCLOUD_WHERE[@]}" --command="$remote"
}

do_logs() {
  [[ $WORKER =~ ^[0-9]+$ ]] || die "--worker must be a worker number, got '$WORKER'"
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" --worker="$WORKER" "${GCLOUD_WHERE[@]}" \
    --command="tail -n 100 -F $LOGS/train-worker$WORKER.log"
}

do_delete() {
  run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_WHERE[@]}" --quiet
}

if [[ $DRY_RUN == 0 ]] && ! command -v gcloud >/dev/null; then
  die "gcloud not found on PATH (install the Google Cloud CLI, or use --dry-run)"
fi
case $SUBCOMMAND in
  create) do_create ;;
  install) do_install ;;
  run|resume) do_run ;;
  stop) do_stop ;;
  logs) do_logs ;;
  delete) do_delete ;;
esac
