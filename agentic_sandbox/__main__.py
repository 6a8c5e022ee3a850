"""`python -m agentic_sandbox`: the `agentic-sandbox` command line (agentic_sandbox._cli)."""

import sys

from agentic_sandbox._cli import main

sys.exit(main())
