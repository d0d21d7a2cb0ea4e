"""Exceptions raised by tf_cnnvis.

Every failure raises one of these with a message that names the bad value and
says what would have been accepted; nothing is printed and swallowed. Each
class also derives from the built-in exception a caller would naturally
catch (``ValueError``, ``FileNotFoundError``...), so generic handlers keep
working.
"""


class TfCnnvisError(Exception):
    """Base class of every error raised by tf_cnnvis."""


class ModelLoadError(TfCnnvisError, ValueError):
    """The model source could not be read or turned into a graph."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A path given as model source does not exist."""


class UntrustedModelError(ModelLoadError):
    """A model file would run code (a Python Lambda, file or process ops) and was not trusted."""


class FeedError(TfCnnvisError, ValueError):
    """The feed dict does not fit the model's inputs."""


class LayerNotFoundError(TfCnnvisError, KeyError):
    """A requested layer does not exist, or a selection matched nothing."""

    def __str__(self):  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class OptionError(TfCnnvisError, ValueError):
    """A keyword option has a value outside what is accepted."""


class OutOfMemoryError(TfCnnvisError, MemoryError):
    """Even one item at a time does not fit the memory the backend has."""


class OutputError(TfCnnvisError, OSError):
    """An output or log folder cannot be used."""


class ReceptiveFieldError(TfCnnvisError, ValueError):
    """No receptive field can be given for this tensor, input and image size."""


class UnsupportedOpError(ReceptiveFieldError):
    """An op on the input-to-output path whose spatial effect is not modelled.

    Raised rather than guessing, because a wrong field silently corrupts the
    crops and checks built on it.
    """

    def __init__(self, op, why: str):
        self.op_type = op.type
        self.op_name = op.name
        super().__init__(f"cannot compute a receptive field through {op.type} op '{op.name}': {why}")
