"""`python -m ghoul` (and `torchrun -m ghoul`) runs the CLI."""

import os
import sys

from ghoul.cli import main

if __name__ == "__main__":
    code = main()
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun for its workers
        # A worker leaves without the interpreter's shutdown: objects still tied to the destroyed gloo process group
        # (an FSDP model's shards, their collectives' work) would be freed there, where gloo's threads can abort
        # the process (SIGABRT) after the command succeeded. Every file the command wrote is closed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
