"""The one exception training stops with: light to import, so the CLI can print it as one line."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss, or no intact checkpoint to resume); the
    message is one line."""
