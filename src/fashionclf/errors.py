"""Errors a user can fix. The CLI prints their message on one line and exits 2."""


class FashionclfError(Exception):
    """Base of every error whose message tells the user what was expected and how to fix it."""


class DataError(FashionclfError):
    """Missing, corrupt or unexpected data."""


class UsageError(FashionclfError):
    """A bad combination of options, or a file that is not what the command needs."""


class TrainingDiverged(FashionclfError):
    """The loss became NaN or infinite: training stops instead of writing NaN weights."""
