"""The one Dockerfile parser: lint, adopt, the parent and base links, the key and
the pinned copy all read a Dockerfile through it. Pure.

- :mod:`.syntax`: instructions, read by BuildKit's own Go parser (the
  ``dockerfile`` package): directives, continuations, heredocs, flags, lines;
- :mod:`.words`: BuildKit's variable substitution and quote removal;
- :mod:`.stages`: global ARGs, stages and every image a build uses, for given
  build args and platform, with what the engines would read differently refused;
- :mod:`.style`: ``FROM ${BASE_IMAGE}`` or literal names;
- :mod:`.pin`: the pinned copy (line numbers kept) and named-context keys.
"""

from orchestrator.core.dockerfile.pin import (
    buildah_context_names,
    buildkit_context_name,
    pin,
    pinned_uses,
)
from orchestrator.core.dockerfile.stages import (
    DEFAULT_PLATFORM,
    SCRATCH,
    Analysis,
    ImageUse,
    Stage,
    analyze,
    platform_args,
)
from orchestrator.core.dockerfile.style import (
    BASE_IMAGE,
    ParentStyle,
    base_image_problem,
    parent_style,
    takes_base_image,
)
from orchestrator.core.dockerfile.syntax import DockerfileError, Heredoc, Instruction, parse

__all__ = [
    "BASE_IMAGE", "DEFAULT_PLATFORM", "SCRATCH", "Analysis", "DockerfileError", "Heredoc",
    "ImageUse", "Instruction", "ParentStyle", "Stage", "analyze", "base_image_problem",
    "buildah_context_names", "buildkit_context_name", "parent_style", "parse", "pin",
    "pinned_uses", "platform_args", "takes_base_image",
]
