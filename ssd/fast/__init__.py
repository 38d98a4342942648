"""Speed without changing a token: CPU kernels, packed and low-bit weights, compiled graphs, row
invariance, the trimmed draft head, and the device policy that chooses among them.

The seam to the paper's core: `ssd.core` imports from this package's namespace only, and only the names
below. The network (`ssd.core.modeling_llama`, `ssd.core.attention`) runs the kernels; the rest of core
names the draft head's type and reads the device policy (`DeviceProfile`: which precisions a search tries).
"""

from ssd.fast import cpu
from ssd.fast.compiled import LayerGraphs
from ssd.fast.device import DeviceProfile, rows_made_invariant
from ssd.fast.draft_head import DraftHead
from ssd.fast.kernels import FastKernels
from ssd.fast.linear import Linear, needs_row_invariance
from ssd.fast.low_bit import LowBitLayer

__all__ = ["DeviceProfile", "DraftHead", "FastKernels", "LayerGraphs", "Linear", "LowBitLayer", "cpu", "needs_row_invariance",
           "rows_made_invariant"]
