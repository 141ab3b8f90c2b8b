"""Build engines behind one protocol. Only this package knows their command lines."""

from orchestrator.backends.base import Builder, BuildOutput, BuildRequest

__all__ = ["BuildOutput", "BuildRequest", "Builder"]
