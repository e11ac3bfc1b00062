"""The command `python -m transfer_pipeline.inspect PATH`; the code is sources/inspect_checkpoint.py.

Only an entry point: nothing in the package imports this module (its name would read like the
standard library's `inspect`).
"""

import sys

from .sources.inspect_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
