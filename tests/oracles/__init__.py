"""Independent statements of what the product computes, used only by tests (and bench/ as
the straightforward-loop baseline): never imported by the product."""
