"""Typed errors, one family per kind of failure.

Each carries a message meant for the user: one line that says what is wrong and what to do. The CLI
prints it with exit code 2; the GUI shows it as a notification. Nothing below the edges formats
tracebacks for the user.
"""

from __future__ import annotations


class SegStudioError(Exception):
    """Base class of every error the user is meant to read."""


class ImageLoadError(SegStudioError):
    """A scan could not be read (missing, corrupt, unsupported, ambiguous DICOM folder...)."""


class ImageWriteError(SegStudioError):
    """A result could not be written (would overwrite a scan, bad extension, disk error...)."""


class ModelError(SegStudioError):
    """A model could not be built (unknown name, bad configuration)."""


class CheckpointError(SegStudioError):
    """A checkpoint could not be read or written (truncated, not ours, pickle refused, mismatch)."""


class InferenceError(SegStudioError):
    """Prediction failed (input does not fit the model, out of memory on every device...)."""


class TrainingError(SegStudioError):
    """Training or fine-tuning could not run (no pairs, mismatched shapes, bad label map...)."""


class Cancelled(SegStudioError):
    """The user cancelled a long job; nothing was written."""
