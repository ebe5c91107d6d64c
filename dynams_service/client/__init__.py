"""The trainer side: SelectorClient, DynaMSSampler and PSP training helpers."""
