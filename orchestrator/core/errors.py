"""Exceptions. Each carries the context an operator needs to act on it.

This module imports nothing from the package so every layer may raise these.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class for every error the orchestrator raises on purpose."""


class InputError(OrchestratorError):
    """Bad user input (config, layer files, command line): exit code 2.

    ``where`` names the file (and line when known) so the message is one
    actionable line: ``layers/pyenv/layer.toml:3: unknown parent 'alpne'``.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}" if where else problem)


class CycleError(InputError):
    def __init__(self, where: str, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__(where, "dependency cycle: " + " -> ".join(cycle))


class TemplateError(OrchestratorError):
    """A ``{name}`` placeholder that no matrix value or upstream provides."""

    def __init__(self, template: str, name: str) -> None:
        self.template = template
        self.name = name
        super().__init__(f"unknown placeholder {{{name}}} in {template!r}")


class RegistryError(OrchestratorError):
    """A registry answered with an error or could not be reached."""

    def __init__(self, registry: str, problem: str, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        self.registry = registry
        self.status = status
        self.retry_after_s = retry_after_s  # from a 429/503 Retry-After header
        super().__init__(f"registry {registry}: {problem}")


class UpstreamError(OrchestratorError):
    """An upstream that cannot be resolved. Its text is shown by status, plan and
    history and sent in events, and is made from a remote's URL, git's stderr
    or any exception: credentials are taken out here, where every one is made."""

    def __init__(self, upstream: str, problem: str, retry_after_s: float | None = None) -> None:
        from orchestrator.core.redact import redact_text  # pure; keeps this module's imports empty

        self.upstream = upstream
        self.retry_after_s = retry_after_s
        super().__init__(f"upstream {upstream}: {redact_text(problem)}")


class BuildFailed(OrchestratorError):
    """A builder process failed; ``log_tail`` holds its last lines."""

    def __init__(self, layer: str, returncode: int | None, log_tail: str, log_path: str) -> None:
        self.layer = layer
        self.returncode = returncode
        self.log_tail = log_tail
        self.log_path = log_path
        what = "timed out" if returncode is None else f"exited {returncode}"
        super().__init__(f"build of {layer} failed: builder {what} (log: {log_path})")


class BackendError(OrchestratorError):
    """The backend tool is missing or misconfigured."""


class PolicyError(InputError):
    """Image policy violations (``orchestrator lint``); ``lines`` holds one per finding."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("", "\n".join(lines))


class StateWriteError(OrchestratorError):
    """The state database could not record a build that made its image."""


class PublishFailed(OrchestratorError):
    """An image was built and pushed, but its key tag or its human tags could not
    be put (the registry failed). No tag names it as complete: the next attempt
    finds no key and builds again (from the engine's step cache), or finds the
    key and points the human tags."""

    def __init__(self, layer: str, digest: str, problem: str) -> None:
        self.layer = layer
        self.digest = digest
        super().__init__(f"{layer}: built {digest[:19]} but could not publish it: {problem}")
