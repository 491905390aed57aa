"""Exact byte-level probabilities from a tokenized model (Phan et al. 2024, arXiv:2410.09303): the vocabulary as
raw bytes (vocab), the cover encodings of a text (covers), and the tree-shaped forward that scores them (forward)."""
