"""Fakes for the seams of unit tests: a recording command runner."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from orchestrator.backends.runner import Captured


class RecordingRunner:
    """Records every argv; answers from ``responses`` (argv -> (rc, stdout))."""

    def __init__(self, on_run: Callable[[list[str]], int] | None = None,
                 capture: Callable[[list[str]], Captured] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.envs: list[Mapping[str, str] | None] = []
        self._on_run = on_run or (lambda argv: 0)
        self._capture = capture or (lambda argv: Captured(0, "", ""))

    async def run(self, argv: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None,
                  timeout_s: float | None = None) -> int | None:
        self.calls.append(list(argv))
        self.envs.append(env)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write("$ " + " ".join(argv) + "\n")
        return self._on_run(list(argv))

    async def capture(self, argv: Sequence[str], *,
                      env: Mapping[str, str] | None = None) -> Captured:
        self.calls.append(list(argv))
        self.envs.append(env)
        return self._capture(list(argv))
