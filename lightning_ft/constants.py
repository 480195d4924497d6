"""Values the data layer and the module must agree on."""

# Label of tokens that carry no loss (prompt, padding); PyTorch cross-entropy's default ignore_index.
IGNORE_INDEX = -100
