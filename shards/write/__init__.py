"""The preprocess stage: list SRC, decode and resize, write each shard on Ray, commit the run."""
