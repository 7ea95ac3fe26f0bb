"""User-facing errors: each message names the file or parameter at fault and what to do about it."""


class RealfakeError(Exception):
    """Base class of errors a user can fix; stage scripts print them without a traceback."""


class ParamsError(RealfakeError):
    """params.yaml holds an unknown key, a bad value or a value the data cannot satisfy."""


class DataError(RealfakeError):
    """An archive or dataset is malformed: layout, counts, image size or colour mode."""


class SourceUnavailableError(RealfakeError):
    """A download source could not be reached (offline, wrong URL, missing credentials)."""


class WeightsUnavailableError(RealfakeError):
    """Pre-trained weights could not be downloaded or found in the Keras cache."""
