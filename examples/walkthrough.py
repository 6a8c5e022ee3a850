from agentic_sandbox import SandboxClient

# Automatically tunnels to svc/sandbox-router-svc
with SandboxClient(template_name="python-runtime-template", namespace="default") as sandbox:
    print(sandbox.run("echo 'Hello from the sandboxed environment!'").stdout)
