"""Learned analyses ("heads") trained on stored records: features and inputs read from Redis (`data`), the three
torch models (`models`), k-fold cross-validated training (`train`) and the job that ties them together (`job`).

The per-position features are defined in `workers.contract.head_features` (the gateway evaluates trained heads in
numpy from the same features; `app/analysis/heads.py` mirrors `models` forward for forward)."""
