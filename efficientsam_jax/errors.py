"""The one exception type for user mistakes: main prints its message on one line, exits 2."""


class UserError(Exception):
  """Bad input from the user (config, path, file): a one-line message, no traceback."""
