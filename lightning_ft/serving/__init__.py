"""Serving a fine-tune (`lightning-ft serve`, on LitServe) and watching it: versions, routing, monitoring, drift,
and the feedback that flows back into training."""
