"""`python -m reelhouse.api`."""

from reelhouse.api.main import main

main()
