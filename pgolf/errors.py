"""The base of errors that a user fixes (a params key, a file, a source), as opposed to bugs."""


class PgolfError(Exception):
    """A problem with the run's inputs; its message names the key or file and the fix."""
