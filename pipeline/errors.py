"""The pipeline's error tree: one root, one subclass per external system."""

from __future__ import annotations

MESSAGE_CHARS = 600  # an error message a user sees: longer ones (a path beyond PATH_MAX…) are cut in the middle


def short(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text` cut in the middle to at most about `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    keep = (limit - 40) // 2
    return f"{text[:keep]} …[{len(text) - 2 * keep} characters]… {text[-keep:]}"


class PipelineError(Exception):
    """Root of every error the pipeline reports to a user."""


class ConfigError(PipelineError):
    """A setting (environment variable or option) is missing or malformed."""


class GitError(PipelineError):
    """The remote could not be checked or fetched."""


class ReleaseError(PipelineError):
    """A rollback names no kept release, or there is none to roll back to."""


class BuildError(PipelineError):
    """Nikola failed to build a commit; ``log_tail`` holds the end of its output."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail
