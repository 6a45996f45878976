"""The accelerator's fixed widths: one constant per hardware width, imported wherever it is used.

The integer semantics (``sim.intops``), program validation (``sim.ops``), the
cost model and the RTL (``hw/``) all read these; nothing restates them as a
literal.
"""

ACC_BITS = 32  #: MAC array accumulators
RESIDUAL_BITS = 16  #: the residual stream (embeddings, adds, LayerNorm inputs, mean pooling)
ADDER_IN_BITS = RESIDUAL_BITS  #: the vector adder's operands (residual adds, add_const and its constant)
MAX_WEIGHT_BITS = 8  #: widest integer weight a program may carry
MAX_ACT_BITS = 16  #: widest activation operand of the MAC array (wider ones take digit passes)
MAX_TENSOR_BITS = 32  #: widest tensor of a program (the accumulators)

REQUANT_M_BITS = 16  #: requantizer multipliers M are unsigned 16-bit
MAX_SHIFT = 62  #: largest right shift of the requantizer, residual adder and LayerNorm affine

LN_IN_BITS = 16  #: LayerNorm unit input
LN_SHIFTED_IN_BITS = 13  #: LayerNorm input when power-of-two factors (up to << 3) are applied first
LN_MAX_IN_SHIFT = 3  #: largest power-of-two input factor of the LayerNorm unit
LN_NORM_BITS = 16  #: LayerNorm's normalized value (x - mean) / std saturates at this width
LN_NORM_FRAC_BITS = 10  #: fractional bits of that normalized value
LN_VAR_BITS = 48  #: LayerNorm's variance (sum of squares / N); its square root has half the bits
LN_RECIP_BITS = 30  #: LayerNorm's reciprocal is floor(2**30 / std)
LN_GAMMA_BITS = 16  #: LayerNorm per-channel scale
LN_BETA_BITS = 32  #: LayerNorm per-channel offset (output zero point folded in)

SOFTMAX_IN_BITS = 16  #: softmax unit input: scores in log2 units
SOFTMAX_FRAC_BITS = 6  #: fractional bits of softmax inputs
SOFTMAX_EXP_BITS = 15  #: exp(0) is 2**15 inside the softmax unit
SOFTMAX_LOG_BITS = 6  #: mantissa bits the softmax unit's log2 table looks at
MAX_CODE_BITS = 5  #: widest log2 attention code
MAX_TULQ_GRID_BITS = 12  #: finest grid of the softmax unit's truncated uniform-log2 output (levels y / 2**grid_bits)
WINDOW_REGION_BITS = 4  #: region ids of a shifted window that the softmax unit compares (Swin: 9 regions)

GELU_IN_BITS = 8  #: the GELU unit is a table indexed by a signed 8-bit value
MAX_GELU_IN_BITS = 10  #: largest GELU table a program may carry (2**10 entries)
GELU_OUT_BITS = 16  #: widest GELU table entry a program may use
