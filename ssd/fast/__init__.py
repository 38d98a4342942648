"""Speed without changing a token: CPU kernels, packed and low-bit weights, compiled graphs, row
invariance, the trimmed draft head, and the device policy that chooses among them."""
