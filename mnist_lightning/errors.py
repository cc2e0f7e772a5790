"""Errors a user can cause and fix. The entry points print their message alone, no traceback."""


class UserError(RuntimeError):
    """A problem with the user's config, data, files or checkpoint; the message says what to do."""


class ConfigError(UserError):
    """One or more config values cannot work; one line each."""


class MNISTDataError(UserError):
    """The MNIST files are missing, damaged or cannot be fetched."""


class CheckpointError(UserError):
    """A checkpoint that is missing, damaged, unsafe or not one of this project's."""


class ImageError(UserError):
    """One image given to predict or serve cannot be used."""


class NotAnImage(ImageError):
    """The bytes are not an image PIL can read."""


class ImageTooLarge(ImageError):
    """The image's size, read from its header, is over the limit."""


class TrainingDiverged(UserError):
    """The training loss became NaN, infinite or absurdly large."""


class OutputError(UserError):
    """A result cannot be written: a full disk, a folder without write permission, a path in use."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a library's long one), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def one_line(text: str) -> str:
    """`text` on one line: a line break or another control character in a value the user gave
    is shown as its escape (`\\r`), so that one problem is always one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
