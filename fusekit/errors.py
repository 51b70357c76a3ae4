"""The one error hierarchy of fusekit.

Every error fusekit raises on purpose derives from :class:`FusekitError`. The CLI maps
each class to an exit code in one place (``fusekit.cli.EXIT_CODES``); library callers
catch the classes. Messages are one line and name the file, node, option or pass.
"""

from __future__ import annotations


class FusekitError(Exception):
    """Base of every error fusekit raises on purpose."""


class InputError(FusekitError):
    """Bad option, missing/corrupt/unsafe model, or an invalid graph given by the user."""


class FindingsError(FusekitError):
    """The run worked but found what the user asked to fail on (e.g. a --verify mismatch)."""


class VerificationError(FindingsError):
    """The optimized model's outputs differ from the original's beyond the tolerance."""


class PassError(FusekitError):
    """A pass crashed or left an invalid graph: a bug in that pass (named in the message)."""


class BackendMissingError(FusekitError):
    """No TensorRT backend (``tensorrt`` or ``tensorrt_rtx``) can be imported."""


class TensorRTError(FusekitError):
    """TensorRT rejected the model: parse or build failure."""


class ParseFailedError(TensorRTError):
    """TensorRT's ONNX parser rejected nodes; ``problems`` lists every one of them.

    ``unsupported`` is true when at least one node was rejected because TensorRT has no
    importer (or plugin) for its op, as opposed to a bad attribute or shape.
    """

    def __init__(self, message: str, problems: list[str], unsupported: bool = False) -> None:
        super().__init__(message + ": " + "; ".join(problems))
        self.summary = message
        self.problems = list(problems)
        self.unsupported = unsupported


class EngineMismatchError(InputError):
    """An engine was built for another GPU architecture or TensorRT version than this
    machine has, or its sidecar does not describe it: refused before deserializing."""
