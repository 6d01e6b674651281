"""Isolated execution of untrusted Python: ``default_sandbox().run(source, stdin, Limits(...))``.

Backends: :class:`~mx_envs.sandbox.process.ProcessSandbox` (default, warm fork pool with
namespaces and rlimits) and :class:`~mx_envs.sandbox.docker_backend.DockerSandbox`. See README.md.
"""

from mx_envs.sandbox.api import Channel, Limits, RunResult, Sandbox, Verdict
from mx_envs.sandbox.process import (
    ChannelClosed,
    ProcessChannel,
    ProcessSandbox,
    SandboxError,
    default_sandbox,
    get_sandbox,
)

__all__ = [
    "Channel",
    "ChannelClosed",
    "Limits",
    "ProcessChannel",
    "ProcessSandbox",
    "RunResult",
    "Sandbox",
    "SandboxError",
    "Verdict",
    "default_sandbox",
    "get_sandbox",
]
