# Shared helpers of the launch scripts; sourced, never run. Callers set PROG and DRY_RUN.
# shellcheck shell=bash

die() { echo "$PROG: error: $*" >&2; exit 2; }

# Prints one argument shell-quoted (bare when it is safe, else in single quotes).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then  # --flag='value', the usual spelling
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  elif [[ $1 =~ ^([A-Z_][A-Z0-9_]*=)(.*)$ ]]; then  # NAME='value' for env assignments
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints all arguments quoted, space-separated, as one pasteable command (no newline).
quote_all() {
  local first=1 a
  for a in "$@"; do
    [[ $first == 1 ]] || printf ' '
    quote "$a"
    first=0
  done
}

# Runs a command, or prints it (one line, quoted so it can be pasted) under --dry-run.
run_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    quote_all "$@"
    printf '\n'
  else
    "$@"
  fi
}

# Reads the valued flag at the front of "$@" (--key=value or --key value) into the caller's
# `key` and `val`, and `flag_args`, the number of arguments it took (the caller shifts them).
# shellcheck disable=SC2034  # key, val, flag_args are read by the caller
split_flag() {
  case $1 in
    --*=*) key=${1%%=*}; val=${1#*=}; flag_args=1 ;;
    --*)
      key=$1
      [[ $# -ge 2 && $2 != --* ]] || die "$key needs a value"
      val=$2; flag_args=2 ;;
    *) die "unexpected argument '$1' (overrides go after --, or use --extra=...)" ;;
  esac
}
