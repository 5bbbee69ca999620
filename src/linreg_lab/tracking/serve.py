"""The MLflow helper's entry point: `python -m linreg_lab.tracking.serve SOCKET OWNER_PID`."""

import sys

from linreg_lab.tracking.helper import main

if __name__ == "__main__":
    main(sys.argv[1:])
