"""The one base class of every user-facing error.

A `UserError` is a mistake in what was asked (a config value, a path, a file, a prompt, the
data): its message is one line that names the thing and says what is wrong. Every
command-line tool prints it as `TOOL: error: MESSAGE` on stderr and exits with status 2,
before anything is compiled where it can be found that early (efficientsam_jax/cli.py).
Library code raises it; nothing catches it but the tools and the places that add context
(which file an error came from).
"""


class UserError(Exception):
  """Bad input from the user: a one-line message, no traceback."""


def one_line(message) -> str:
  """Any message (an exception, multi-line text) as one line of at most 500 characters."""
  text = " ".join(str(message).split())
  return text if len(text) <= 500 else text[:497] + "..."


def in_context(error: Exception, where: str) -> UserError:
  """A UserError saying `where: message` (the message already names `where`: unchanged)."""
  message = one_line(error)
  return UserError(message if message.startswith(str(where)) else f"{where}: {message}")
