"""``python -m vlselect`` = the ``vlselect`` command."""

from vlselect.cli import main

if __name__ == "__main__":
    main()
