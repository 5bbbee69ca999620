"""The vectorized launcher's logic: which sweep jobs share a pass, and training them together."""
