"""Values and names that several layers must agree on (no heavy imports: the command line reads them too)."""

from typing import Literal

# Label of tokens that carry no loss (prompt, padding); PyTorch cross-entropy's default ignore_index.
IGNORE_INDEX = -100

# The tasks a model trains for, and the dtypes weights load in ("auto": as stored), spelled as torch spells them
# everywhere (--model.dtype, --dtype of export, eval and bench-inference).
Task = Literal["causal_lm", "sequence_classification"]
DType = Literal["float32", "bfloat16", "float16", "auto"]
