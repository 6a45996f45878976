"""``baseline``: per-channel min/max weights, per-tensor min/max activations, dyadic requantization.

The reference every other method is measured against: nothing but the
shared observers and quantizers.
"""

from __future__ import annotations

from quant.methods import register_method
from quant.plan import Sites, baseline_plan, collect


@register_method("baseline")
def baseline(spec, batches, wbits: int, abits: int, *, progress: bool = True, sites: Sites | None = None):
    observers = collect(spec, batches, progress=progress)
    return baseline_plan(spec, observers, wbits, abits, sites=sites)
