"""`python -m agentic_sandbox._holder NAME ...`: the holder process (process.main).

Started by agentic_sandbox._holder.control.spawn(); nothing else runs it.
"""

import sys

from agentic_sandbox._holder.process import main

sys.exit(main())
