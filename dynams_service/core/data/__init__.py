"""Data I/O: shard datasets (manifest, Parquet shards, conversion), sample decoders and
image headers, streaming reads, the trainer's ``ShardDataset`` and Fashion-MNIST's IDX."""
