"""What DEST holds and how it is laid out: the manifest schema, the shard plan, verification."""
