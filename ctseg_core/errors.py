"""User-facing errors: one line that names the file and says how to fix it."""

from __future__ import annotations


class CtsegError(Exception):
    """An error caused by the user's input, shown as one line (no traceback) by the CLI and pages."""


class DataError(CtsegError):
    """A dataset, subject, image or mask that cannot be used as it is."""


class GridMismatch(DataError):
    """An image (a mask) on another grid than the CT it belongs to."""


class NotAVolume(DataError):
    """An image that is not one 3D volume (2D, or 4D with several frames); ``shape`` its own."""

    def __init__(self, message: str, shape: tuple[int, ...] = ()) -> None:  # () to unpickle
        super().__init__(message)
        self.shape = shape


class ConfigError(CtsegError):
    """Settings that are refused before any work starts."""


class TrainingError(CtsegError):
    """Training cannot go on (NaN loss, a checkpoint that cannot be written); the message says
    what to change and how to continue."""
