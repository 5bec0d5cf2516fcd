"""`python -m ghoul` (and `torchrun -m ghoul`) runs the CLI."""

from ghoul.cli import entry

if __name__ == "__main__":
    entry()
