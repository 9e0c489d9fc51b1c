"""The one wrapper around every command-line tool of the package.

`cli.run(main, "predict")` parses the flags (defined at import time by the tool's module),
then calls `main()`. What it guarantees, for every tool alike:
- a user mistake is one line on stderr, `TOOL: error: MESSAGE`, and exit status 2: a bad or
  unknown flag, a config file that cannot be loaded or a bad variant word, and every
  `UserError` the tool raises. Never a traceback for those.
- other libraries' logs (Orbax, grain) stay off the console below a level (WARNING for
  training, ERROR for the other tools) unless `--verbosity` is given; the package's own INFO
  lines (training progress) are shown.
- Ctrl-C is one line, `TOOL: interrupted`, and status 130 (training instead saves and exits
  with 75: train/runtime.py).
- glibc keeps freed host memory for reuse (`keep_freed_host_memory`).
The process ends with os._exit after a user error: after a failed Orbax read its background
threads would print asyncio tracebacks during interpreter shutdown, burying the message.
"""
import ctypes
import difflib
import logging as std_logging
import os
import re
import sys

from absl import app, flags, logging

from efficientsam_jax.errors import UserError, one_line

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def fail(program: str, message) -> None:
  """Prints `PROGRAM: error: MESSAGE` on stderr and ends the process with status 2."""
  print(f"{program}: error: {one_line(message)}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(EXIT_USER_ERROR)


def keep_freed_host_memory() -> bool:
  """Makes glibc keep freed host memory for reuse instead of returning it to the system.

  XLA's CPU runtime mallocs its buffers on every call; with glibc's defaults, buffers above a
  dynamic threshold are fresh mmaps and freed heap tops are trimmed, so every call
  page-faults its working set in again (docs/performance.md measures the cost). Serving
  allocations up to 32 MB from the heap and never trimming it below 2 GB keeps the resident
  set at its peak, which a training or serving process reaches anyway. Both settings are
  needed: either alone was measured slower than the defaults. A no-op off glibc or when the
  user set MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_. Returns whether it applied.
  """
  if not sys.platform.startswith("linux") or any(
      k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
    return False
  try:
    mallopt = ctypes.CDLL("libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc (musl, ...)
    return False
  return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _put_config_roots_on_path(argv: list[str]) -> None:
  """Config files import `configs.common`: the folder above each --config file's folder goes
  on sys.path, so a config path works from any working directory."""
  for i, arg in enumerate(argv):
    value = None
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    if value:
      root = os.path.dirname(os.path.dirname(os.path.abspath(value.split(":", 1)[0])))
      if root not in sys.path:
        sys.path.insert(0, root)


def _config_flag_names() -> list[str]:
  from ml_collections.config_flags import config_flags
  return [name for name, flag in flags.FLAGS._flags().items()  # pylint: disable=protected-access
          if isinstance(flag, config_flags._ConfigFlag)]  # pylint: disable=protected-access


def _check_configs(program: str) -> None:
  """A config file that failed to load fails on first use; make that happen now."""
  for name in _config_flag_names():
    flag = flags.FLAGS[name]
    if flag.value is None:
      continue
    try:
      flag.value.keys()
    except Exception as e:  # pylint: disable=broad-except
      fail(program, f"--{name}: {_config_error(e)}")


def _config_error(error: Exception) -> str:
  """The informative line of a config loading failure (ml_collections wraps the cause)."""
  text = str(error)
  if "No such file or directory" in text:
    path = text.rsplit("No such file or directory:", 1)[-1].strip().strip("'")
    return f"no such config file {path}"
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  return one_line(error)


def _unknown_override(argv: list[str], error: Exception) -> str | None:
  """`--config.KEY=VALUE` naming a key the config lacks, as one line with the keys nearby
  (ml_collections reports only the bare key); None for any other error."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  quoted = re.search(r"'([^']+)'", str(error))
  if not isinstance(error, (KeyError, AttributeError)) or not quoted:
    return None
  for arg in argv[1:]:
    match = re.fullmatch(r"--(\w+)\.([\w.]+)=.*", arg, re.DOTALL)
    if not match or match.group(1) not in _config_flag_names():
      continue
    parts = match.group(2).split(".")
    if quoted.group(1) not in parts:
      continue
    where = ".".join(parts[:parts.index(quoted.group(1))])
    try:  # the flag holds no value yet: load the config again for the keys nearby
      source = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{match.group(1)}=")][-1]
      node = flags.FLAGS[match.group(1)].parser.parse(source)
      for part in where.split(".") if where else ():
        node = node[part]
      close = difflib.get_close_matches(quoted.group(1), list(node.keys()), n=3)
    except Exception:  # pylint: disable=broad-except
      close = []
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"--{match.group(1)}.{match.group(2)}: the config has no key "
            f"{match.group(1)}.{'.'.join(parts[:parts.index(quoted.group(1)) + 1])}{hint}")
  return None


def _flag_error(error: Exception) -> str:
  """A flag parsing error in one line. ml_collections reports an exception raised by a config
  file's get_config (a bad variant word) with the whole traceback in the message: the flag
  and the exception's own last line are what the user needs."""
  text = str(error)
  if "Traceback (most recent call last)" not in text:
    return text
  flag = text.split(":", 1)[0]
  last = [line for line in text.splitlines() if line.strip()][-1].strip()
  kind, sep, message = last.partition(": ")
  if sep and re.fullmatch(r"[\w.]+", kind):  # "configs.common.VariantError: ..."
    last = message
  return f"{flag}: {last}"


class _LibraryLogFilter(std_logging.Filter):
  """Drops records below `level` that do not come from this package."""

  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record):
    if record.pathname.startswith(_PACKAGE_DIR):
      return True
    if record.levelno < self.level:
      return False
    # Shown in one line: a library's traceback (Orbax logs one per failed background write
    # before the tool reports the failure itself) is for --verbosity.
    record.exc_info, record.exc_text = None, None
    return True


def quiet_libraries(level: int) -> None:
  """Shows other libraries' log records from `level` up only, in one line each (the package's
  own records all), as the tools do without --verbosity; for processes a tool spawns too."""
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_LibraryLogFilter(level))


def _quiet_closed_loop_callbacks(hook):
  """An unraisablehook that drops "Event loop is closed" from library callbacks: after a
  failed Orbax write (a full disk), tensorstore completes each pending write into Orbax's
  finished event loop, and each would print a traceback (hundreds) after the tool has
  reported the failure in its one line."""

  def quiet(unraisable):
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"):
      hook(unraisable)

  return quiet


def run(main, program: str, *, library_level: int = std_logging.ERROR,
        keep_host_memory: bool = True, argv=None) -> None:
  """Runs `main(argv)` as the command-line tool `program` (see the module docstring).

  library_level: other libraries' log records below this level (Python logging levels) are
    not shown unless --verbosity is given; the package's own are.
  keep_host_memory: apply `keep_freed_host_memory` (False: the tool decides itself).
  argv: the command line (default sys.argv).
  """

  def parse(argv):
    _put_config_roots_on_path(argv)
    try:
      rest = flags.FLAGS(argv)
    except flags.Error as e:
      fail(program, _flag_error(e))
    except Exception as e:  # pylint: disable=broad-except
      # A config file's get_config raising (a bad variant word) or failing to import, or an
      # override naming a key the config does not have.
      fail(program, _unknown_override(argv, e) or f"--config: {_config_error(e)}")
    if len(rest) > 1:
      fail(program, f"unexpected arguments: {' '.join(rest[1:])} (flags look like --name=value)")
    _check_configs(program)
    return rest

  def wrapped(argv):
    if not flags.FLAGS["verbosity"].present:
      quiet_libraries(library_level)
      sys.unraisablehook = _quiet_closed_loop_callbacks(sys.unraisablehook)
    if keep_host_memory:
      keep_freed_host_memory()
    try:
      return main(argv)
    except UserError as e:
      fail(program, e)
    except KeyboardInterrupt:  # Ctrl-C (training handles it itself: save, exit 75)
      print(f"{program}: interrupted", file=sys.stderr)
      sys.stderr.flush()
      os._exit(EXIT_INTERRUPTED)

  app.run(wrapped, argv=argv, flags_parser=parse)
