"""What went wrong with a file or an object, in words a user can act on, and which failures
are worth retrying (io/paths.py uses both; the trainer retries its own writes)."""
import errno
import time
from typing import Callable

from absl import logging

from efficientsam_jax.errors import UserError, one_line

# Transient storage errors: tries and the backoff between them (1, 2, 4, 8 s: about 15 s on
# top of the clients' own retries).
RETRY_ATTEMPTS = 5
RETRY_FIRST_DELAY = 1.0

_FORBIDDEN = ("Forbidden", "PERMISSION_DENIED", "AccessDenied", "http_response_code='403'")
_UNAUTHORISED = ("Unauthorized", "UNAUTHENTICATED", "http_response_code='401'",
                 "DefaultCredentialsError", "RefreshError", "credentials were not found")
_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EFBIG: "file too large for the filesystem (or the process's file size limit)"}
_NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")
_TRANSIENT = ("Service Unavailable", "UNAVAILABLE", "DEADLINE_EXCEEDED", "Too Many Requests",
              "Internal Server Error", "Bad Gateway", "Gateway Timeout", "Connection reset",
              "ServerDisconnected", "ClientConnector", "timed out")


def cause(error: BaseException) -> str:
  """Why a storage operation failed, in a few words a user can act on."""
  text = f"{type(error).__name__}: {error}"
  if isinstance(error, OSError) and error.errno in _NO_SPACE:
    return _NO_SPACE[error.errno]
  for marker in _NO_SPACE_TEXT:
    if marker in text:
      return _NO_SPACE[{"No space left on device": errno.ENOSPC,
                        "Disk quota exceeded": errno.EDQUOT}.get(marker, errno.EFBIG)]
  if isinstance(error, PermissionError) or any(m in text for m in _FORBIDDEN):
    return "permission denied"
  if any(m in text for m in _UNAUTHORISED):
    return ("no valid credentials (on a Google Cloud VM its service account is used; "
            "elsewhere run `gcloud auth application-default login`)")
  if isinstance(error, FileNotFoundError):
    return "no such file or directory"
  if isinstance(error, IsADirectoryError):
    return "is a directory"
  if isinstance(error, NotADirectoryError):
    return "not a directory"
  if isinstance(error, OSError) and error.strerror:
    return error.strerror
  return one_line(text)[:300]


def is_transient(error: BaseException) -> bool:
  """A storage error that may go away by itself (a 5xx, a rate limit, a dropped connection)."""
  if isinstance(error, (ConnectionError, TimeoutError)):
    return True
  code = getattr(error, "code", None)
  if isinstance(code, int) and (code in (408, 429) or 500 <= code < 600):
    return True
  text = f"{type(error).__name__}: {error}"
  return any(m in text for m in _TRANSIENT)


def retrying(operation: Callable, what: str, attempts: int = RETRY_ATTEMPTS,
             first_delay: float = RETRY_FIRST_DELAY, sleep: Callable = time.sleep):
  """operation() with transient storage errors retried: `attempts` tries in all, the waits
  doubling from `first_delay`. A persistent or non-transient failure is a UserError naming
  `what` and the cause."""
  delay = first_delay
  for attempt in range(1, attempts + 1):
    try:
      return operation()
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if not is_transient(e) or attempt == attempts:
        tries = f" after {attempt} tries" if attempt > 1 else ""
        raise UserError(f"{what}: failed{tries}: {cause(e)}") from None
      logging.warning("%s: %s; retrying in %.0fs (try %d of %d)", what, cause(e), delay,
                      attempt + 1, attempts)
      sleep(delay)
      delay *= 2
