"""A user's data function: returns a pandas DataFrame (a pair (X, y) of arrays works too)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def load_sales(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """Weekly sales of a made-up shop: price, advertising and temperature, and the revenue."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "price": rng.uniform(5, 15, rows),
        "advertising": rng.uniform(0, 2000, rows),
        "temperature": rng.normal(18, 6, rows),
    })  # fmt: skip
    frame["revenue"] = (5000 - 180 * frame.price + 1.5 * frame.advertising
                        + 20 * frame.temperature + rng.normal(0, 50, rows))  # fmt: skip
    return frame
