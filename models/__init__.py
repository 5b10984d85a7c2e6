"""Pure torch/numpy: dataset arrays and splits, metrics, recommenders. No file, network or env access."""
