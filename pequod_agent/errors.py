"""The agent's error tree: one root, one subclass per input or external system."""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent reports to a user (one line, no traceback)."""


class ManifestError(AgentError):
    """pequod.xml is unreadable or invalid; the message names file, element and attribute."""


class DockerError(AgentError):
    """The Docker engine is missing, not answering, or refused an operation."""


class ImageBuildError(AgentError):
    """Building the base or the application image failed."""
