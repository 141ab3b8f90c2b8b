# Types of the ``dockerfile`` package (BuildKit's parser behind a C extension,
# which ships no stubs): only what orchestrator.core.dockerfile uses.
from typing import NamedTuple

class GoParseError(ValueError): ...
class GoIOError(OSError): ...

class Heredoc(NamedTuple):
    name: str
    file_descriptor: int
    content: str

class Command(NamedTuple):
    cmd: str
    sub_cmd: str | None
    json: bool
    original: str
    start_line: int
    end_line: int
    flags: tuple[str, ...]
    value: tuple[str, ...]
    heredocs: tuple[Heredoc, ...]

def parse_string(s: str) -> tuple[Command, ...]: ...
def parse_file(filename: str) -> tuple[Command, ...]: ...
