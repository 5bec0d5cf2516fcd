"""`python -m ghoul` (and `torchrun -m ghoul`) runs the CLI."""

from ghoul.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
