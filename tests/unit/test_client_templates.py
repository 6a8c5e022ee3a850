"""Local templates: lookup order, what applies (env, CPU, memory), warm pools, the OCI spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentic_sandbox import TemplateNotFoundError
from agentic_sandbox._backends.local import spec as local_spec
from agentic_sandbox._backends.local import workspace
from agentic_sandbox._templates import (
    BUILTIN_DIR,
    LocalTemplate,
    load_template,
    parse_cpu,
    parse_memory,
    template_dirs,
)

USER_TEMPLATE = """
apiVersion: extensions.agents.x-k8s.io/v1alpha1
kind: SandboxTemplate
metadata: {name: python-runtime-template}
spec:
  podTemplate:
    spec:
      containers:
      - name: c
        image: whatever
        env: [{name: GREETING, value: hi}]
        resources: {requests: {cpu: 500m}, limits: {cpu: "2", memory: 1Gi}}
---
apiVersion: extensions.agents.x-k8s.io/v1alpha1
kind: SandboxWarmPool
metadata: {name: pool}
spec: {replicas: 3, sandboxTemplateRef: {name: python-runtime-template}}
"""


def test_quantities():
    assert parse_cpu("250m") == 250 and parse_cpu("1") == 1000 and parse_cpu(0.5) == 500
    assert parse_memory("512Mi") == 512 * 2**20 and parse_memory("1G") == 10**9
    assert parse_memory("1024") == 1024
    for bad in ("", "abc", "-1", "1Qi"):
        with pytest.raises(ValueError):
            parse_memory(bad)
    with pytest.raises(ValueError):
        parse_cpu("x")


def test_builtin_is_the_walkthrough_template():
    template = load_template("python-runtime-template", template_dirs(None, environ={}))
    assert template.source.startswith(str(BUILTIN_DIR))
    assert template.cpu_request_millis == 250
    assert template.memory_limit_bytes is None  # requests only: no hard limit from it
    assert template.warm_pool == 0
    assert template.ephemeral_storage_bytes == 512 * 2**20  # the walkthrough's request
    assert "image" in template.ignored and "runtimeClassName" in template.ignored


def test_user_folder_overrides_builtin_and_sets_pool(tmp_path):
    (tmp_path / "mine.yaml").write_text(USER_TEMPLATE)
    template = load_template("python-runtime-template", template_dirs(str(tmp_path)))
    assert template.env == (("GREETING", "hi"),)
    assert template.cpu_limit_millis == 2000 and template.memory_limit_bytes == 2**30
    assert template.warm_pool == 3


def test_environment_names_folders(tmp_path):
    (tmp_path / "t.yml").write_text(USER_TEMPLATE.replace("python-runtime-template", "other"))
    dirs = template_dirs(None, environ={"AGENTIC_SANDBOX_TEMPLATES": str(tmp_path)})
    assert load_template("other", dirs).name == "other"


def test_missing_template_names_the_folders(tmp_path):
    with pytest.raises(TemplateNotFoundError) as info:
        load_template("nope", template_dirs(str(tmp_path)))
    assert str(tmp_path) in str(info.value) and info.value.reason == "TemplateNotFound"


def test_malformed_yaml_is_a_value_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: [unclosed")
    with pytest.raises(ValueError, match=r"bad\.yaml"):
        load_template("x", template_dirs(str(tmp_path)))


def test_oci_spec_is_locked_down(tmp_path):
    (tmp_path / "mine.yaml").write_text(USER_TEMPLATE)
    template = load_template("python-runtime-template", template_dirs(str(tmp_path)))
    spec = local_spec.oci_spec(template, tmp_path / "ws", tmp_path / "state", "agentsbx-1-ab")
    assert spec["root"] == {"path": str(tmp_path / "state" / "rootfs"), "readonly": True}
    process = spec["process"]
    assert process["user"] == {"uid": 65534, "gid": 65534}
    assert all(v == [] for v in process["capabilities"].values())
    assert process["noNewPrivileges"] is True
    assert "GREETING=hi" in process["env"]
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/workspace"]["source"] == str(tmp_path / "ws")
    assert "rw" in mounts["/workspace"]["options"]
    # Of the host, only its system folders (and the runtime's own code) are there, read-only.
    assert mounts["/usr"] == {"destination": "/usr", "type": "bind", "source": "/usr",
                              "options": ["rbind", "ro"]}
    assert not {"/root", "/home", "/run", "/var", "/srv", "/opt", "/work"} & set(mounts)
    assert {"type": "network"} in spec["linux"]["namespaces"]
    resources = spec["linux"]["resources"]
    assert resources["memory"]["limit"] == 2**30
    assert resources["cpu"] == {"shares": 512, "period": 100000, "quota": 200000}
    assert resources["pids"]["limit"] == local_spec.PIDS_LIMIT
    no_cgroups = local_spec.oci_spec(template, tmp_path, tmp_path, "x", cgroups=False)
    assert "resources" not in no_cgroups["linux"]


def test_cpu_and_disk_are_bounded_by_default(monkeypatch):
    monkeypatch.delenv(local_spec.CPU_ENV, raising=False)
    monkeypatch.delenv(workspace.DISK_ENV, raising=False)
    bare = LocalTemplate(name="bare", source="x")
    assert local_spec.cpu_limit_millis(bare) == 1000  # one CPU, not the whole machine
    assert workspace.workspace_bytes(bare) == 2**30
    requested = LocalTemplate(name="r", source="x", cpu_request_millis=1500,
                                    ephemeral_storage_bytes=1)
    assert local_spec.cpu_limit_millis(requested) == 1500  # a larger request raises the bound
    assert workspace.workspace_bytes(requested) == workspace.MIN_DISK_BYTES
    limited = LocalTemplate(name="l", source="x", cpu_limit_millis=250,
                                  cpu_request_millis=1500)
    assert local_spec.cpu_limit_millis(limited) == 250  # a limit is the limit
    monkeypatch.setenv(local_spec.CPU_ENV, "500m")
    monkeypatch.setenv(workspace.DISK_ENV, "64Mi")
    assert (local_spec.cpu_limit_millis(bare), workspace.workspace_bytes(bare)) == (500, 64 * 2**20)
    # Without a template limit the bound is set once the sandbox is ready, not in its spec
    # (the data-plane tier checks the running sandbox's cgroup).
    spec = local_spec.oci_spec(bare, Path("/ws"), Path("/state"), "agentsbx-1-ab")
    assert "cpu" not in spec["linux"]["resources"]


def test_ephemeral_storage_limit_wins_over_the_request(tmp_path):
    (tmp_path / "t.yaml").write_text(USER_TEMPLATE.replace(
        "requests: {cpu: 500m}", "requests: {cpu: 500m, ephemeral-storage: 1Gi}").replace(
        'memory: 1Gi}', 'memory: 1Gi, ephemeral-storage: 100Mi}'))
    template = load_template("python-runtime-template", template_dirs(str(tmp_path)))
    assert template.ephemeral_storage_bytes == 100 * 2**20


def test_the_runtime_s_code_is_bound_read_only_wherever_it_lives(tmp_path, monkeypatch):
    """A checkout under /tmp (as CI may use) or /root must still reach the runtime's code."""
    monkeypatch.setattr(local_spec, "visible_paths",
                        lambda: ["/tmp/clone/.venv", "/root/src", "/usr/lib/python3"])
    template = load_template("python-runtime-template", template_dirs(None))
    spec = local_spec.oci_spec(template, tmp_path / "ws", tmp_path / "state", "agentsbx-1-ab")
    binds = {m["destination"]: m["options"] for m in spec["mounts"] if m["type"] == "bind"}
    assert binds["/tmp/clone/.venv"] == ["rbind", "ro"]
    assert binds["/root/src"] == ["rbind", "ro"]
    assert "/usr/lib/python3" not in binds, "visible anyway: /usr is bound read-only"
