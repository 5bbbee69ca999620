"""An example of a user's own package for linreg-lab (README: your own data and configs)."""
