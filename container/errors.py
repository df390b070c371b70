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


class BootstrapError(AgentError):
    """The bootstrap YAML is unreadable or invalid; the message names file and key."""


class NetworkError(AgentError):
    """Setting up the bridge or an instance's interface failed."""


class FirewallError(AgentError):
    """iptables refused our rules."""


class FrontendError(AgentError):
    """HAProxy refused a configuration or cannot run."""


class DaemonError(AgentError):
    """A host daemon cannot be started."""


class VolumeError(AgentError):
    """A persistent filesystem cannot be created or mounted."""


class CertificateError(AgentError):
    """A certificate cannot be read, obtained from the ACME CA, or installed in the frontend."""
