"""Thin integrations of ``DynaMSSampler`` with training frameworks (docs/training.md).

Each is an optional extra (``pip install 'dynams-service[lightning]'``): ``lightning``
(a Trainer callback) and ``accelerate`` (a checked ``prepare``). Ray Train needs none:
``DynaMSSampler`` is a ``DistributedSampler``, so ``prepare_data_loader`` keeps it.
"""
