# Shared by the launch/*.sh scripts (sourced, not run); bash 3.2 or later.
#
#   lib_init NAME "$@"   parses the script's own options (--dry-run,
#                         --skip_selftest, -h/--help) and leaves the remaining
#                         arguments in ARGS.
#   run CMD...            prints "+ CMD" (quoted so that it can be pasted into a
#                         shell), then runs CMD, or only prints it in dry-run
#                         mode (DRY_RUN=1 or --dry-run): on stdout when dry, on
#                         stderr when real.
#   run_exec CMD...       the same, but replaces the script by CMD (signals such
#                         as SIGTERM then reach the trainer directly).
#   die MESSAGE           "NAME: error: MESSAGE" on stderr, exit 2.
#   note MESSAGE          "NAME: MESSAGE" on stderr.
#   require VAR HINT      dies with a clear message when $VAR is empty.
#   split_config_arg ...  takes --config=PATH (or --config PATH) out of the
#                         trainer arguments: sets CONFIG_ARG and TRAINER_ARGS.
#   option_value NAME ... prints the value of --NAME=VALUE (or --NAME VALUE)
#                         among the arguments, the last one; nothing if none.
#
# SKIP_SELFTEST=1 after --skip_selftest: the scripts then train without
# running mnist-dist-selftest first.

LIB_NAME=launch
DRY_RUN=${DRY_RUN:-0}
SKIP_SELFTEST=0
ARGS=()

die() {
  printf '%s: error: %s\n' "$LIB_NAME" "$*" >&2
  exit 2
}

note() {
  printf '%s: %s\n' "$LIB_NAME" "$*" >&2
}

# Quotes one word for a POSIX shell, only when it needs it: as is, in double
# quotes when nothing in it is special there, else in single quotes. A
# --flag=VALUE word keeps its --flag= outside the quotes.
shell_quote() {
  local word=$1 prefix=''
  if [[ -n $word && $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
    return
  fi
  if [[ $word =~ ^(--[A-Za-z0-9_.-]+=)(.+)$ ]]; then
    prefix=${BASH_REMATCH[1]}
    word=${BASH_REMATCH[2]}
  fi
  case "$word" in
    *[\"\$\`\\!]* | *$'\n'*) printf "%s'%s'" "$prefix" "${word//\'/\'\\\'\'}" ;;
    *) printf '%s"%s"' "$prefix" "$word" ;;
  esac
}

# All arguments, each quoted, separated by spaces.
shell_join() {
  local out='' word
  for word in "$@"; do
    out+="${out:+ }$(shell_quote "$word")"
  done
  printf '%s' "$out"
}

is_dry_run() {
  case "$DRY_RUN" in
    1|[Tt]rue|TRUE|[Yy]es|YES|[Oo]n|ON) return 0 ;;
    *) return 1 ;;
  esac
}

run() {
  if is_dry_run; then
    printf '+ %s\n' "$(shell_join "$@")"
    return 0
  fi
  printf '+ %s\n' "$(shell_join "$@")" >&2
  "$@"
}

run_exec() {
  if is_dry_run; then
    printf '+ %s\n' "$(shell_join "$@")"
    exit 0
  fi
  printf '+ %s\n' "$(shell_join "$@")" >&2
  exec "$@"
}

require() {
  local var=$1 hint=$2
  if [[ -z ${!var:-} ]]; then
    die "$var is not set: $hint (usage: $LIB_NAME --help)"
  fi
}

# Prints the script's opening comment block (its usage), without the '#'.
print_header() {
  awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}

lib_init() {
  LIB_NAME=$1
  local script=$2
  shift 2
  ARGS=()
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --skip_selftest) SKIP_SELFTEST=1 ;;
      -h|--help) print_header "$script"; exit 0 ;;
      --) shift; ARGS+=("$@"); break ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

split_config_arg() {
  CONFIG_ARG=''
  TRAINER_ARGS=()
  while (($#)); do
    case "$1" in
      --config=*) CONFIG_ARG=${1#--config=} ;;
      --config)
        (($# >= 2)) || die '--config needs a value'
        CONFIG_ARG=$2
        shift
        ;;
      *) TRAINER_ARGS+=("$1") ;;
    esac
    shift
  done
}

option_value() {
  local name=$1 value=''
  shift
  while (($#)); do
    case "$1" in
      --"$name"=*) value=${1#--"$name"=} ;;
      --"$name") (($# >= 2)) && value=$2 && shift ;;
    esac
    shift
  done
  printf '%s' "$value"
}
