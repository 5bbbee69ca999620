"""Command-line entry points: linreg-train, linreg-report, linreg-ui."""
