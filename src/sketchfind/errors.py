"""Errors sketchfind raises on purpose: each one carries a message meant for a person."""


class SketchfindError(Exception):
    """Base class: the CLI prints the message and exits non-zero; the API answers 4xx."""


class InputError(SketchfindError):
    """An input image, sketch, stroke list or SVG could not be used."""


class EmptySketchError(InputError):
    """A sketch with no ink on it."""


class CheckpointError(SketchfindError):
    """A weights file is missing, unreadable, or does not fit the model."""


class ConfigError(SketchfindError):
    """An unknown model name or an invalid configuration."""


class IndexStoreError(SketchfindError):
    """An index directory is missing, damaged, or built with another model."""


class TooLargeError(InputError):
    """An input over a size limit (bytes, pixels): the API answers 413."""


class IncompleteIndexError(IndexStoreError):
    """An index directory whose creation was interrupted before anything was committed."""


class UnknownPhotoError(IndexStoreError):
    """A photo id that is not in the index."""


class PhotoMissingError(SketchfindError):
    """An indexed photo whose file is gone or no longer readable."""


class NotAPhotoError(InputError):
    """Content that no photo decoder accepts (a drawing, a document...), whatever its name says."""


class TooComplexError(InputError):
    """A drawing over a complexity or time budget (elements, points, path length, seconds): the API answers 422."""


class UncalibratedError(SketchfindError):
    """Weights without an int8 calibration: the onnx-int8 runtime cannot quantise them (auto runs fp32)."""


class VectorBackendError(SketchfindError):
    """Milvus is not installed, unreachable, or lacks the index's collection: the API answers 503."""
