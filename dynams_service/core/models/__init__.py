"""Models: slimmable layers and the architecture registry, ``make_slimmable`` for your own
network, and the PSP's export and rebuild (``proxy``)."""
