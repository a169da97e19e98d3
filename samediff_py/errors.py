"""Every exception samediff_py raises on purpose, in one place (each also importable from where it is used).

>>> from samediff_py.errors import MaskError
>>> issubclass(MaskError, ValueError)
True
"""

from __future__ import annotations

import os


class BackendMissing(RuntimeError):
    """Java or the nd4j jars are not available; the message says what to run."""


# ops samediff_py names after the run-time check they make: what their failure means, added to the message
OP_HINTS = {
    "mask_must_match_value": "a mask's [batch, time] must equal the first two dims of the value it masks (a mask "
    "of batch or time 1, or of the same size with other dims, is refused rather than broadcast or reordered)",
}


class JavaError(RuntimeError):
    """A Java exception raised inside the JVM, re-raised in Python.

    Attributes:
        java_class: fully qualified name of the Java exception class.
        java_message: the exception's message (``None`` if it had none).
        java_stack: the Java stack trace lines, when pyjnius provides them.
    """

    def __init__(self, java_class: str, java_message: str | None, stack: list[str] | None = None):
        self.java_class = java_class
        self.java_message = java_message
        self.java_stack = stack or []
        hints = [h for op, h in OP_HINTS.items() if op in (java_message or "")]
        super().__init__(f"{java_class}: {java_message}" + "".join(f"\n  hint: {h}" for h in hints))


class MaskError(ValueError):
    """A mask is missing, malformed, inverted-looking, or would be lost by an operation."""


class FeedError(ValueError):
    """A feed breaks a declared contract.

    For example ids outside an embedding table, labels outside the classes, a sequence longer than a position table,
    an empty batch; the message names the placeholder.
    """


class ModelFileError(OSError):
    """A model file cannot be read or written: missing, truncated, corrupt, or not a SameDiff model.

    Attributes:
        path: the file.
        reason: what went wrong (for Java failures: the Java exception class and message).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class TrainingError(RuntimeError):
    """Training went wrong in a way that must stop it (e.g. a NaN or infinite loss); the message names the step."""


class ReplicaMismatchError(TrainingError):
    """Data-parallel replicas stopped holding identical parameters (``samediff_py.distributed``).

    Attributes:
        step: the global step (batches done) at which the hashes were compared.
        ranks: the workers whose parameters differ from the majority (rank 0's on a tie).
    """

    def __init__(self, message: str, step: int, ranks: list[int]):
        self.step = step
        self.ranks = ranks
        super().__init__(message)


class WorkerLostError(TrainingError):
    """A data-parallel worker died and could not be replaced: restarts used up, or no checkpoint to resume from."""


class PadInvarianceError(AssertionError):
    """Raised by :func:`samediff_py.testing.assert_pad_invariant`; ``.report`` holds the findings."""

    def __init__(self, report: object):
        self.report = report
        super().__init__(str(report))
