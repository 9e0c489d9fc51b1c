"""Every file the package reads or writes, on a local disk or in Cloud Storage (`gs://`).

Local paths go through the os module, exactly as plain `open`/`os.replace` would; `gs://`
paths through etils.epath (the layer Orbax, grain and TFDS use; it reaches Cloud Storage
through gcsfs, an install dependency). What this module owns:
- reading: `read_bytes`, `read_text`, `read_json`, `open_read` (random access, e.g. zip and
  tar), `exists`, `is_dir`, `list_dir`, `walk_files`, `join`.
- whole-file writes that are atomic: `write` (bytes or text) and `write_with` (a function
  that writes into a file object). Local: a temporary name in the same folder, fsync, then
  os.replace: readers see the old file or the new one, and a failure (a full disk) leaves the
  old one untouched and no temporary behind. gs://: the bytes are made in memory first and
  sent as one object write; Cloud Storage shows an object only when its upload completes,
  and nothing is sent when making the bytes fails (an `open(..., "wb")` handle would commit
  a partial object when an exception closes it).
- one-line `UserError`s naming the path and the cause: no such bucket, permission denied,
  no credentials, no space, no such file (`storage_error`, `check_bucket`,
  `check_writable_dir`; the causes and the bounded retries of transient errors are in
  storage_errors.py).
- outputs that would clobber an input or an existing file (`check_outputs`).
- the client settings a local GCS server needs (`_configure_clients`, at import).
The module is long because it is the whole path layer: each operation's local and gs://
forms belong side by side.
"""
import contextlib
import errno
import io
import json
import logging as std_logging
import os
import tempfile
import uuid
from typing import Callable

from efficientsam_jax.errors import UserError, one_line
from efficientsam_jax.io.storage_errors import cause, is_transient, retrying  # noqa: F401

REMOTE_PREFIX = "gs://"
# New local files get the mode a plain open() would give them (mkstemp's is 0600).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _configure_clients() -> None:
  """Client settings, before gcsfs is first imported (epath imports it on first gs:// use).

  Always: gcsfs lists without its listings cache (Orbax writes through tensorstore and lists
  through gcsfs: a cached listing misses new checkpoints). With STORAGE_EMULATOR_HOST (a
  local GCS server): the other clients get pointed at the same server (tensorstore and
  array_record's reader would otherwise wait minutes on storage.googleapis.com), anonymous
  tokens, and gcsfs without its gRPC bucket-type probe, which the emulator does not speak.
  """
  import fsspec  # light; gcsfs registers itself under these names

  for protocol in ("gs", "gcs"):
    fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if not emulator:
    return
  if "://" not in emulator:
    emulator = "http://" + emulator
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", emulator)
  os.environ.setdefault("CLOUD_STORAGE_EMULATOR_ENDPOINT", emulator)
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "dummy")
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  os.environ.setdefault("NO_GCE_CHECK", "true")
  for protocol in ("gs", "gcs"):
    fsspec.config.conf[protocol].setdefault("token", "anon")
  # gcsfs logs an ERROR with a traceback on every rename: the emulator lacks the moveTo API
  # and gcsfs falls back to copy + delete, which is correct.
  std_logging.getLogger("gcsfs").addFilter(
      lambda record: "moveTo" not in record.getMessage()
      and "couldn't decode" not in record.getMessage())


_configure_clients()


# --- What a path is -----------------------------------------------------------------------

def is_remote(path) -> bool:
  return str(path).startswith(REMOTE_PREFIX)


def _epath(path):
  from etils import epath  # imports gcsfs on first gs:// use
  return epath.Path(str(path))


def join(base, *parts) -> str:
  if is_remote(base):
    return "/".join([str(base).rstrip("/")] + [str(p).strip("/") for p in parts])
  return os.path.join(base, *parts)


def absolute(path) -> str:
  """A local path made absolute; a gs:// path unchanged."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def dirname(path) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path)


def basename(path) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def same_file(a, b) -> bool:
  """Whether two paths name the same file (local: after resolving links; gs://: by name)."""
  if is_remote(a) or is_remote(b):
    return str(a).rstrip("/") == str(b).rstrip("/")
  return os.path.realpath(a) == os.path.realpath(b)


def bucket(path) -> str:
  return str(path)[len(REMOTE_PREFIX):].split("/", 1)[0]


# --- Errors -------------------------------------------------------------------------------

def bucket_exists(path) -> bool:
  """For a gs:// path: whether its bucket exists (errors reaching it are UserErrors). A
  caller allowed to use the bucket's objects but not to read the bucket's own metadata
  (e.g. the roles/storage.objectAdmin role) gets True: only a definite 404 is False."""
  root = REMOTE_PREFIX + bucket(path)
  try:
    return _epath(root).exists()
  except Exception as e:  # pylint: disable=broad-except
    if cause(e) == "permission denied":
      return True
    raise UserError(f"{path}: cannot reach bucket {root}: {cause(e)}") from None


def storage_error(error: BaseException, path, action: str = "read") -> UserError:
  """A UserError `PATH: cannot ACTION: CAUSE`; a missing bucket is named as such."""
  reason = cause(error)
  if is_remote(path) and isinstance(error, FileNotFoundError):
    with contextlib.suppress(UserError):
      if not bucket_exists(path):
        reason = f"no such bucket {REMOTE_PREFIX}{bucket(path)}"
  return UserError(f"{path}: cannot {action}: {reason}")


def check_bucket(path, what: str = "") -> None:
  """UserError unless a gs:// path's bucket exists (a local path: nothing to check). A typo
  in a bucket name must fail here: Orbax reads a missing bucket as an empty one."""
  if is_remote(path) and not bucket_exists(path):
    label = f"{what} " if what else ""
    raise UserError(f"{label}{path}: no such bucket {REMOTE_PREFIX}{bucket(path)}")


# --- Reading ------------------------------------------------------------------------------

def exists(path) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  try:
    return _epath(path).exists()
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(e, path, "check") from None


def is_dir(path) -> bool:
  if not is_remote(path):
    return os.path.isdir(path)
  try:
    return _epath(path).is_dir()
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(e, path, "check") from None


def is_file(path) -> bool:
  return exists(path) and not is_dir(path)


def list_dir(path) -> list[str]:
  """Names in a folder (FileNotFoundError when there is none)."""
  if not is_remote(path):
    return os.listdir(path)
  return [p.name for p in _epath(path).iterdir()] if is_dir(path) else _missing(path)


def _missing(path):
  raise FileNotFoundError(errno.ENOENT, "no such file or directory", str(path))


def walk_files(root) -> list[str]:
  """Every file under `root` at any depth, as paths relative to it (any order)."""
  root = str(root)
  if not is_remote(root):
    return [os.path.relpath(os.path.join(d, n), root)
            for d, _, names in os.walk(root, followlinks=True) for n in names]
  found = []
  prefix = root[len(REMOTE_PREFIX):].rstrip("/")
  for directory, _, names in _epath(root).walk():
    # fsspec names the folders it walks without the gs:// prefix.
    rel = os.fspath(directory).removeprefix(REMOTE_PREFIX)[len(prefix):].strip("/")
    found += [f"{rel}/{n}" if rel else n for n in names]
  return found


def open_read(path):
  """A seekable binary file object (use as a context manager)."""
  return _epath(path).open("rb") if is_remote(path) else open(path, "rb")


def read_bytes(path) -> bytes:
  """The file's bytes; OSError (FileNotFoundError, ...) as the clients raise it."""
  if is_remote(path):
    return _epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def read_input(path, what: str = "file") -> bytes:
  """The bytes of an input file; UserError `PATH: no such WHAT` (or `no such bucket`),
  `is a directory, not a WHAT`, or `cannot read: CAUSE`."""
  try:
    return read_bytes(path)
  except FileNotFoundError as e:
    error = storage_error(e, path)
    if "no such bucket" in str(error):
      raise error from None
    raise UserError(f"{path}: no such {what}") from None
  except IsADirectoryError:
    article = "an" if what[:1] in "aeiou" else "a"
    raise UserError(f"{path}: is a directory, not {article} {what}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise storage_error(e, path) from None


def read_json(path, what: str = "file"):
  """A JSON file's content; UserErrors as read_input, or `PATH: not valid JSON (...)`."""
  data = read_input(path, what)
  try:
    return json.loads(data)
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not valid JSON ({one_line(e)})") from None


# --- Writing ------------------------------------------------------------------------------

def makedirs(path) -> None:
  """Creates a local folder (and parents); gs:// has no folders: nothing to do."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def write_with(path, write: Callable, action: str = "write") -> None:
  """Calls `write(file)` with a binary file object and puts the result at `path` atomically
  (see the module docstring). A storage failure is a UserError naming the path and the
  cause; an exception of `write` itself propagates (and nothing is written)."""
  if is_remote(path):
    buffer = io.BytesIO()
    write(buffer)  # its exceptions propagate before anything is sent
    try:
      _epath(path).write_bytes(buffer.getvalue())
    except Exception as e:  # pylint: disable=broad-except
      raise storage_error(e, path, action) from None
    return
  try:
    write_raw(path, write)
  except OSError as e:
    raise storage_error(e, path, action) from None


def write_raw(path, write: Callable) -> None:
  """write_with without the translation: the clients' exceptions as raised (for retrying)."""
  path = str(path)
  if is_remote(path):
    buffer = io.BytesIO()
    write(buffer)
    _epath(path).write_bytes(buffer.getvalue())
    return
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial",
                               dir=os.path.dirname(os.path.abspath(path)))
    os.chmod(tmp, 0o666 & ~_UMASK)
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    tmp = None
  finally:
    if tmp is not None:
      with contextlib.suppress(OSError):
        os.remove(tmp)


def write(path, data, action: str = "write") -> None:
  """Writes bytes or text (UTF-8) to `path` atomically (see write_with)."""
  payload = data.encode("utf-8") if isinstance(data, str) else data  # bytes-like, not copied
  write_with(path, lambda f: f.write(payload), action)


def remove(path) -> None:
  if is_remote(path):
    _epath(path).unlink()
  else:
    os.remove(path)


def remove_tree(path) -> None:
  """Deletes a folder this package created (never a user's)."""
  if is_remote(path):
    _epath(path).rmtree()
  else:
    import shutil
    shutil.rmtree(path)


def move(src, dst) -> None:
  """Moves a file or folder (gs://: copies each object, then deletes it: not atomic)."""
  if not is_remote(src):
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    os.replace(src, dst)
    return
  src, dst = str(src).rstrip("/"), str(dst).rstrip("/")
  names = walk_files(src) if is_dir(src) else [""]
  for name in names:
    source = join(src, name) if name else src
    write(join(dst, name) if name else dst, read_bytes(source))
  remove_tree(src) if names != [""] else remove(src)


def upload(local_file: str, path) -> None:
  """Copies a finished local file to `path` as one whole object (or atomically, locally)."""
  with open(local_file, "rb") as f:
    write_with(path, lambda out: out.write(f.read()))


@contextlib.contextmanager
def local_folder(prefix: str = "esam-"):
  """A temporary local folder (for writers that need a local file before an upload)."""
  with tempfile.TemporaryDirectory(prefix=prefix) as folder:
    yield folder


def check_writable_dir(path, what: str = "folder") -> None:
  """Creates a local folder if needed and proves it writable with a small probe file; for
  gs://, checks the bucket and writes and deletes a probe object. Each process uses its own
  probe name. UserError `WHAT PATH is not writable: CAUSE` otherwise."""
  check_bucket(path, what)
  probe = join(path, f".write_probe.{os.getpid()}.{uuid.uuid4().hex[:8]}")
  try:
    makedirs(path)
    write(probe, b"\0" * 4096)
    remove(probe)
  except UserError as e:
    reason = str(e).split(": cannot write: ", 1)[-1]
    raise UserError(f"{what} {path} is not writable: {reason}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"{what} {path} is not writable: {cause(e)}") from None


# --- Outputs the user names ---------------------------------------------------------------

def check_outputs(outputs: dict, inputs: dict, overwrite: bool = False) -> None:
  """UserError when an output would clobber an input or another output, or (without
  `overwrite`) an existing file. outputs, inputs: {label (e.g. "--output"): path or None}."""
  named = [(label, p) for label, p in outputs.items() if p]
  for i, (label, path) in enumerate(named):
    for other_label, other in [(l, p) for l, p in inputs.items() if p] + named[:i]:
      if same_file(path, other):
        raise UserError(f"{label}={path} is also {other_label}: it would be overwritten; "
                        "choose another path")
    check_bucket(path, label)
    if is_dir(path):
      raise UserError(f"{label}={path} is a directory; give a file name")
    if not overwrite and exists(path):
      raise UserError(f"{label}={path} exists; pass --overwrite to replace it")
