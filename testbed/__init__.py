"""testbed: the harness that starts real parts on loopback, shared by tests/ and bench/.

Not shipped (pyproject's package list leaves it out) and never imported by the product
packages. bench/ imports it, never tests/ (import-linter keeps that so: `make lint`).

- support.py        free loopback ports, waiting for a port, process-group clean-up, serve()
- kube.py           etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 (TLS, RBAC)
- metacontroller.py the whole loop: control plane, hooks under gunicorn, a real Metacontroller
- kubelet.py        the kubelet stand-in (Kubelet) that runs a real sandbox-runtime per pod
- hookrequests.py   Metacontroller hook requests shaped exactly like the real ones
- slowclients.py    idle and half-header connections held against a server, probe latencies
- tenancy_rules.py  the tenancy rules (one pod per Sandbox uid, ever) over recorded watch events
- tenancy.py        the recorder of those events and a kubelet stand-in with graceful deletion
"""
