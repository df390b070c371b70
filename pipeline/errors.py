"""The pipeline's error tree: one root, one subclass per external system."""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error the pipeline reports to a user."""


class ConfigError(PipelineError):
    """A setting (environment variable or option) is missing or malformed."""


class CommandError(PipelineError):
    """A subprocess failed or timed out; carries what is needed to diagnose it."""

    def __init__(self, cmdline: str, returncode: int | None, output: str, timed_out: bool = False):
        self.cmdline = cmdline
        self.returncode = returncode
        self.output = output
        self.timed_out = timed_out
        if timed_out:
            what = "timed out"
        elif returncode is not None and returncode < 0:
            what = f"was killed by signal {-returncode}"
        else:
            what = f"exited with status {returncode}"
        super().__init__(f"{cmdline} {what}")


class GitError(PipelineError):
    """The remote could not be checked or fetched."""


class BuildError(PipelineError):
    """Nikola failed to build a commit; ``log_tail`` holds the end of its output."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail
