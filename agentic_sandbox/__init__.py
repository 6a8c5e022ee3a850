"""agentic_sandbox: run untrusted code in a gVisor sandbox, on Kubernetes or on this machine.

    from agentic_sandbox import SandboxClient

    with SandboxClient(template_name="python-runtime-template", namespace="default") as sandbox:
        print(sandbox.run("echo 'Hello from the sandboxed environment!'").stdout)

    async with AsyncSandboxClient(template_name="python-runtime-template") as sandbox:
        print((await sandbox.run("echo hello")).stdout)

The public names are listed in __all__; everything else is private (docs/client.md).
"""

from agentic_sandbox._async_client import AsyncCommandStream, AsyncProcess, AsyncSandboxClient
from agentic_sandbox._backends.base import Backend, Endpoint
from agentic_sandbox._backends.choice import choose_backend
from agentic_sandbox._client import CommandStream, Process, SandboxClient
from agentic_sandbox._exceptions import (
    BackendUnavailableError,
    ClaimFailedError,
    SandboxConnectionError,
    SandboxError,
    SandboxRequestError,
    SandboxTimeoutError,
    TemplateNotFoundError,
)
from agentic_sandbox._models import (
    ArchiveSummary,
    ExecutionResult,
    FileEntry,
    FileStat,
    OutputChunk,
    ProcessInfo,
    ProcessOutput,
)

__version__ = "0.1.0"

__all__ = [
    "ArchiveSummary",
    "AsyncCommandStream",
    "AsyncProcess",
    "AsyncSandboxClient",
    "Backend",
    "BackendUnavailableError",
    "ClaimFailedError",
    "CommandStream",
    "Endpoint",
    "ExecutionResult",
    "FileEntry",
    "FileStat",
    "OutputChunk",
    "Process",
    "ProcessInfo",
    "ProcessOutput",
    "SandboxClient",
    "SandboxConnectionError",
    "SandboxError",
    "SandboxRequestError",
    "SandboxTimeoutError",
    "TemplateNotFoundError",
    "__version__",
    "choose_backend",
]
