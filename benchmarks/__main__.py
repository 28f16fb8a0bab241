"""`python -m benchmarks ...` is `edgeqa bench ...`."""

import sys

from edgeqa.cli import app

if __name__ == "__main__":
    app(["bench", *sys.argv[1:]], prog_name="python -m benchmarks")
