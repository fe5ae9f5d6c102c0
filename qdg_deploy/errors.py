"""The one exception type the CLI turns into a single clear error line and a non-zero exit."""


class QdgError(Exception):
    """A user-facing error: bad input, a missing file, an unsupported combination."""


class DataError(QdgError):
    """A data set that cannot be read as asked."""
