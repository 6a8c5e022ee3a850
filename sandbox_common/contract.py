"""The names the packages agree on, spelled once: API groups, kinds, plurals, Metacontroller's
map keys, our label and annotation keys, routing headers, condition types and reasons.

Imported by the hooks (what they write), the router (what it reads, which headers it takes),
the client (what it creates, which headers it sends, which reasons end a wait), tests and bench.
A name changed here changes for all of them at once; tests/unit/test_contract.py checks that
every reason the hooks can write is classified below and that the client stops waiting on
exactly the terminal ones.

Constants only: it imports nothing (not even the standard library), so any package, including
the client without extras, can import it for free. It must never grow behaviour.
"""

# ---- API: groups, versions, kinds, plurals (fixed by the seed walkthrough) -----------------

GROUP = "agents.x-k8s.io"
EXTENSIONS_GROUP = "extensions.agents.x-k8s.io"
VERSION = "v1alpha1"
SANDBOX_API = f"{GROUP}/{VERSION}"
EXTENSIONS_API = f"{EXTENSIONS_GROUP}/{VERSION}"

SANDBOX_KIND = "Sandbox"
CLAIM_KIND = "SandboxClaim"
TEMPLATE_KIND = "SandboxTemplate"
POOL_KIND = "SandboxWarmPool"

SANDBOXES = "sandboxes"
CLAIMS = "sandboxclaims"
TEMPLATES = "sandboxtemplates"
POOLS = "sandboxwarmpools"

# ---- Metacontroller ---------------------------------------------------------------------

# Keys of a hook request's `children` and `related` maps: "Kind.apiVersion".
POD_KEY = "Pod.v1"
SERVICE_KEY = "Service.v1"
PVC_KEY = "PersistentVolumeClaim.v1"
NETWORK_POLICY_KEY = "NetworkPolicy.networking.k8s.io/v1"
SANDBOX_KEY = f"{SANDBOX_KIND}.{SANDBOX_API}"
TEMPLATE_KEY = f"{TEMPLATE_KIND}.{EXTENSIONS_API}"
POOL_KEY = f"{POOL_KIND}.{EXTENSIONS_API}"
# Metacontroller's own keys: the label generateSelector adds, and its record of what it applied.
METACONTROLLER_UID_LABEL = "controller-uid"
LAST_APPLIED = "metacontroller.k8s.io/last-applied-configuration"

# ---- labels and annotations we own (users cannot set keys under GROUP or its subdomains) ----

# A pod serving a Sandbox carries both: the name for people, the uid for every selector. A name
# is reused when a Sandbox is deleted and created again; a uid never is, so nothing that decides
# which pod serves which Sandbox (Service selector, binding, status) ever keys by the name.
SANDBOX_LABEL = f"{GROUP}/sandbox"
SANDBOX_UID_LABEL = f"{GROUP}/sandbox-uid"
TEMPLATE_LABEL = f"{GROUP}/sandbox-template"
POOL_LABEL = f"{GROUP}/warm-pool"
CLAIM_LABEL = f"{GROUP}/claim"
ROLE_LABEL = f"{GROUP}/role"  # on the router's pods; the NetworkPolicies trust it
POD_NAME_ANNOTATION = f"{GROUP}/pod-name"
TEMPLATE_HASH_ANNOTATION = f"{GROUP}/template-hash"
# Idle sandboxes (docs/controller.md, "Idle sandboxes"). The router writes both annotations on
# a Sandbox: the time of its last routed request (throttled), and, to wake a suspended one, the
# lastTransitionTime of the Suspended condition it saw (a token: writing it twice is one wake).
LAST_ACTIVITY_ANNOTATION = f"{GROUP}/last-activity"
WAKE_ANNOTATION = f"{GROUP}/wake"
# On a pod serving a Sandbox that has been woken: which wake it serves (a hash of the token).
# A pod made or bound before a suspension never serves the Sandbox after it.
INCARNATION_LABEL = f"{GROUP}/incarnation"

# ---- routing headers: client -> router (the router never forwards them) --------------------

SANDBOX_ID_HEADER = "X-Sandbox-ID"
SANDBOX_NAMESPACE_HEADER = "X-Sandbox-Namespace"
SANDBOX_PORT_HEADER = "X-Sandbox-Port"
SANDBOX_TIMEOUT_HEADER = "X-Sandbox-Timeout"
# The uid of the Sandbox the client means (metadata.uid): a name can be re-used, a uid never.
SANDBOX_UID_HEADER = "X-Sandbox-UID"
ROUTING_HEADERS = (SANDBOX_ID_HEADER, SANDBOX_NAMESPACE_HEADER, SANDBOX_PORT_HEADER,
                   SANDBOX_TIMEOUT_HEADER, SANDBOX_UID_HEADER)
# router -> client, on every answer the router makes itself before it forwards anything (its
# refusals: 400, 401, 404, 409, 413, 503): the request never reached the sandbox, so sending it
# again cannot run a command twice. The router drops this header from a sandbox's own answers.
NOT_FORWARDED_HEADER = "X-Sandbox-Not-Forwarded"

# ---- conditions -------------------------------------------------------------------------

READY = "Ready"  # the one condition type every kind reports
# A Sandbox with an idle timeout also reports Suspended: True (reason IDLE) while it sleeps,
# False with RESUMED after a wake, or ACTIVE before any suspension.
SUSPENDED = "Suspended"
IDLE = "Idle"
RESUMED = "Resumed"
ACTIVE = "Active"

# Reasons of Ready, by what a waiting client should do about them.
SANDBOX_READY = "SandboxReady"
POOL_READY = "PoolReady"
NETWORK_POLICY_READY = "NetworkPolicyReady"
NETWORK_POLICY_DISABLED = "NetworkPolicyDisabled"

SANDBOX_NOT_READY = "SandboxNotReady"
POD_NOT_READY = "PodNotReady"
WAITING_FOR_ANNOTATION = "WaitingForPodNameAnnotation"
WAITING_FOR_WARM_POD = "WaitingForWarmPod"
SCALED_TO_ZERO = "ScaledToZero"
# Ready=False while suspended (the condition type's name): a request wakes it, so waiting is right.
POOL_NOT_READY = "PoolNotReady"
NETWORK_POLICY_PENDING = "NetworkPolicyPending"

INVALID_SPEC = "InvalidSpec"
TEMPLATE_NOT_FOUND = "TemplateNotFound"
POOL_NOT_FOUND = "WarmPoolNotFound"
EXPIRED = "Expired"
SANDBOX_EXPIRED = "SandboxExpired"
POD_LOST = "PodLost"

# Ready=True: the object does what it was asked.
READY_REASONS = frozenset({SANDBOX_READY, POOL_READY, NETWORK_POLICY_READY,
                           NETWORK_POLICY_DISABLED})
# Ready=False and moving: the controllers are getting there (or the owner scaled to zero and
# scaling up ends it), so a client keeps waiting, up to its timeout.
WAITING_REASONS = frozenset({SANDBOX_NOT_READY, POD_NOT_READY, WAITING_FOR_ANNOTATION,
                             WAITING_FOR_WARM_POD, SCALED_TO_ZERO, SUSPENDED, POOL_NOT_READY,
                             NETWORK_POLICY_PENDING})
# Ready=False and no amount of waiting fixes it: a client fails at once instead of burning its
# timeout (upstream's TERMINAL_CLAIM_READY_REASONS).
TERMINAL_REASONS = frozenset({INVALID_SPEC, TEMPLATE_NOT_FOUND, POOL_NOT_FOUND, EXPIRED,
                              SANDBOX_EXPIRED, POD_LOST})
REASONS = READY_REASONS | WAITING_REASONS | TERMINAL_REASONS
# Reasons of the Suspended condition (not of Ready: a client never waits on them).
SUSPENDED_REASONS = frozenset({IDLE, RESUMED, ACTIVE})

# The client's own reason (ClaimFailedError.reason), no condition's: the router answered 409,
# or the claim's Sandbox is owned by another claim, so the name now means another Sandbox.
SANDBOX_REPLACED = "SandboxReplaced"
