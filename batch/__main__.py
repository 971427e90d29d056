"""python -m batch: see batch/cli.py."""
from batch.cli import main

if __name__ == "__main__":
    main()
