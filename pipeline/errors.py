"""The pipeline's error tree: one root, one subclass per external system."""

from __future__ import annotations


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
