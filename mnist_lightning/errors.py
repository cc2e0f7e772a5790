"""Errors a user can cause and fix; the entry points print their message alone, no traceback."""


class UserError(RuntimeError):
    """A problem with the user's config, data, files or checkpoint; the message says what to do."""
