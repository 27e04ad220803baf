"""Benchmarks: shards against its peers (Ray Data, tf.data, bare loops), measured in one run.

`python -m bench` (or `make bench`) generates a corpus, runs every section and prints ratios, so
a figure means something on a noisy shared machine. Results go to bench-results/ as JSON and a
markdown table.
"""
