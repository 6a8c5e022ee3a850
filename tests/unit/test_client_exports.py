"""The public surface of agentic_sandbox is deliberate (httpx's test_exported_members idea)."""

from __future__ import annotations

import subprocess
import sys

import agentic_sandbox


def test_all_names_exist_and_are_the_public_ones():
    public = {name for name in dir(agentic_sandbox) if not name.startswith("_")}
    assert set(agentic_sandbox.__all__) - {"__version__"} == public - {"annotations"}
    for name in agentic_sandbox.__all__:
        assert getattr(agentic_sandbox, name) is not None
        obj = getattr(agentic_sandbox, name)
        if hasattr(obj, "__module__") and name != "__version__":
            assert obj.__module__.startswith("agentic_sandbox")


def test_error_tree_shape():
    e = agentic_sandbox
    for name in ("ClaimFailedError", "SandboxTimeoutError", "SandboxConnectionError",
                 "SandboxRequestError", "BackendUnavailableError"):
        assert issubclass(getattr(e, name), e.SandboxError)
    assert issubclass(e.TemplateNotFoundError, e.ClaimFailedError)
    assert issubclass(e.SandboxTimeoutError, TimeoutError)


def test_import_is_light_and_configures_no_logging():
    code = ("import sys, logging; import agentic_sandbox; "
            "heavy = ('flask', 'gunicorn', 'kubernetes', 'aiohttp'); "
            "bad = [m for m in heavy if m in sys.modules]; "
            "assert not bad, bad; assert not logging.getLogger().handlers")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_py_typed_is_shipped():
    from pathlib import Path
    assert (Path(agentic_sandbox.__file__).parent / "py.typed").is_file()
