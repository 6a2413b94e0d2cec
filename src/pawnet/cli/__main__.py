"""`python -m pawnet.cli`: the `pawnet` command."""

from pawnet.cli import main

main()
