"""`python -m pawnet.cli`: the `pawnet` command."""

from pawnet.cli import main

if __name__ == "__main__":
    main()
