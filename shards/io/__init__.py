"""Files and where they live: atomic local writes, object storage, a run's location, the DEST lock."""
