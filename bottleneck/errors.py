"""The exceptions a user can cause and fix. The CLI prints these as one line; anything else is a bug
and keeps its traceback. No imports: every module can raise these without pulling in torch."""


class BottleneckError(Exception):
    """Base of every user-facing error; the message is one line that names the input and the fix."""


class SpecError(BottleneckError):
    """An option value an extractor cannot take (pool, precision, storage dtype, decoder...)."""


class BackboneError(BottleneckError):
    """A model can't be resolved or built as asked."""


class UnknownModelError(BackboneError):
    pass


class WeightsUnavailableError(BackboneError):
    pass


class DatasetError(BottleneckError):
    """A folder that cannot be used as a dataset."""


class StoreError(BottleneckError):
    """A cache that cannot be used as asked."""


class CacheBusyError(StoreError):
    pass


class DiskFullError(StoreError):
    """Not enough free space for the next write; nothing already written is lost."""


class DamagedVectorsError(StoreError):
    """Stored vectors that fail their checksum (or are not finite); `shas` names the images."""

    def __init__(self, message: str, shas: list[str]) -> None:
        super().__init__(message)
        self.shas = shas


class DeviceError(BottleneckError):
    """A --device this machine cannot use (a GPU that torch does not see)."""


class ExtractError(BottleneckError):
    """An extraction that cannot go on (e.g. no image could be used)."""


class FitError(BottleneckError):
    """Data a head cannot be trained or used on."""


class UnknownHeadError(BottleneckError, ValueError):
    """A head name that is not in ``heads.HEADS``."""


class OutputError(BottleneckError):
    """An output path that is the cache, an input or another output, or where nothing can be written."""


class CompareError(BottleneckError):
    """A comparison that cannot run as asked."""


class AuditError(BottleneckError):
    """The dataset can't be audited as asked (one class, too few images for the folds...)."""


def one_line_reason(exc: BaseException, limit: int = 240) -> str:
    """An exception as one short line, for a message that names the file and the fix."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:limit]
