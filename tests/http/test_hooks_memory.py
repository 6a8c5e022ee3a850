"""The hook server's memory stays bounded however many distinct large specs it validates.

A real `sandbox-hooks` (gunicorn, one worker) gets 1,000 distinct Sandbox specs of 512 KiB (a
tenth of them invalid, with the big value where the schema rejects it) and a dozen of 20 MiB,
within the 32 MiB body limit. The worker's resident memory, read from /proc, must stay under
150 MiB throughout (checked every 50 specs) and afterwards, and every answer's condition
message short enough for the CRD's status (32 KiB). Validation results were once memoized by
the whole spec text: a dozen 20 MiB specs pinned about 940 MiB.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import requests

from sandbox_common import contract
from testbed.hookrequests import sandbox, sync_request

MiB = 1024 * 1024
RSS_LIMIT_MIB = 150
STATUS_MESSAGE_LIMIT = 32768  # schemas/*.json: conditions[].message maxLength


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def large_spec_body(size: int, *, invalid: bool) -> bytes:
    """A sync request for a Sandbox carrying `size` bytes of a value seen nowhere else."""
    parent = sandbox("big")
    blob = secrets.token_hex(size // 2)
    if invalid:
        parent["spec"]["shutdownTime"] = blob  # not a date-time: the message quotes it
    else:
        parent["spec"]["podTemplate"]["spec"]["containers"][0]["env"] = [
            {"name": "BLOB", "value": blob}]
    return json.dumps(sync_request(parent)).encode()


def test_memory_stays_bounded_after_a_thousand_distinct_large_specs(hooks_server):
    url, worker = hooks_server.url, hooks_server.worker()
    session = requests.Session()
    before = rss_mib(worker)
    sizes = [MiB // 2] * 1000 + [20 * MiB] * 12
    longest = 0
    for index, size in enumerate(sizes):
        invalid = index % 10 == 0
        answer = session.post(f"{url}/sync/sandbox", data=large_spec_body(size, invalid=invalid),
                              headers={"Content-Type": "application/json"}, timeout=60)
        assert answer.status_code == 200, answer.text[:300]
        (ready,) = answer.json()["status"]["conditions"]
        assert (ready["reason"] == contract.INVALID_SPEC) == invalid
        longest = max(longest, len(ready["message"]))
        if index % 50 == 49:  # stop at the first breach rather than eat the machine's memory
            assert rss_mib(worker) < RSS_LIMIT_MIB, f"worker RSS after {index + 1} large specs"
    after = rss_mib(worker)
    print(f"\nworker RSS: {before:.0f} MiB before, {after:.0f} MiB after {len(sizes)} distinct "
          f"large specs ({sum(sizes) // MiB} MiB); longest condition message {longest} chars")
    assert longest <= STATUS_MESSAGE_LIMIT
    assert after < RSS_LIMIT_MIB, f"worker RSS {after:.0f} MiB after {len(sizes)} large specs"


def test_the_body_limit_is_the_documented_32_mib(hooks_url):
    url = hooks_url
    answer = requests.post(f"{url}/sync/sandbox", data=b"x" * (32 * MiB + 1),
                           headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 413
    assert "error" in answer.json()

