"""The read stage: open a run, order and slice its samples, stream batches, cache remote shards."""
