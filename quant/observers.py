"""Calibration observers: statistics of float activations, turned into quantization grids.

One :class:`Observer` per quantization point keeps the running min / max, the
per-channel min / max (over the last axis), a bounded random sample of
values and one of whole rows; ``minmax``, ``percentile`` and ``mse`` turn that into a grid.
"""

from __future__ import annotations

import torch

from quant.quantizers import QParams, qparams_from_range

SAMPLE_SIZE = 1 << 17  #: values kept for percentile / MSE searches
ROW_SAMPLE = 2048  #: whole rows (all channels of one token) kept for per-channel searches


class Observer:
    def __init__(self, seed: int = 0):
        self.min = float("inf")
        self.max = float("-inf")
        self.ch_min: torch.Tensor | None = None
        self.ch_max: torch.Tensor | None = None
        self._values: list[torch.Tensor] = []
        self._rows: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """Record ``x`` [..., C]; ``valid`` [...] masks out padded tokens."""
        x = x.detach().float()
        rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(-1, 1)
        if valid is not None:
            rows = rows[valid.reshape(-1).bool()]
        if rows.numel() == 0:
            return
        cmin, cmax = rows.amin(dim=0), rows.amax(dim=0)
        self.ch_min = cmin if self.ch_min is None else torch.minimum(self.ch_min, cmin)
        self.ch_max = cmax if self.ch_max is None else torch.maximum(self.ch_max, cmax)
        self.min = min(self.min, float(cmin.min()))
        self.max = max(self.max, float(cmax.max()))
        flat = rows.reshape(-1)
        self._values.append(flat[torch.randint(flat.numel(), (min(flat.numel(), SAMPLE_SIZE // 4),), generator=self._gen)])
        self._rows.append(rows[torch.randint(rows.shape[0], (min(rows.shape[0], ROW_SAMPLE // 4),), generator=self._gen)])

    @staticmethod
    def _subsample(parts: list[torch.Tensor], size: int, gen: torch.Generator) -> torch.Tensor:
        whole = torch.cat(parts)
        if whole.shape[0] > size:
            whole = whole[torch.randperm(whole.shape[0], generator=gen)[:size]]
        return whole

    @property
    def sample(self) -> torch.Tensor:
        """A random sample of at most SAMPLE_SIZE observed values."""
        if len(self._values) != 1:
            self._values = [self._subsample(self._values, SAMPLE_SIZE, self._gen)]
        return self._values[0]

    @property
    def rows(self) -> torch.Tensor:
        """A random sample of at most ROW_SAMPLE observed rows [n, C]."""
        if len(self._rows) != 1:
            self._rows = [self._subsample(self._rows, ROW_SAMPLE, self._gen)]
        return self._rows[0]

    # ---------------------------------------------------------- grids
    def minmax(self, bits: int, symmetric: bool) -> QParams:
        return qparams_from_range(self.min, self.max, bits, symmetric)

    def percentile(self, bits: int, symmetric: bool, pct: float = 99.99) -> QParams:
        lo = float(torch.quantile(self.sample, 1 - pct / 100))
        hi = float(torch.quantile(self.sample, pct / 100))
        return qparams_from_range(lo, hi, bits, symmetric)

    def mse(self, bits: int, symmetric: bool, grid: int = 40) -> QParams:
        """The clipped range (shrinking both ends together) with the least squared error on the sample."""
        best, best_err = None, float("inf")
        for i in range(grid):
            r = 1.0 - i / (grid * 1.25)
            qp = qparams_from_range(self.min * r, self.max * r, bits, symmetric)
            err = float((qp.fake(self.sample) - self.sample).pow(2).mean())
            if err < best_err:
                best, best_err = qp, err
        return best
