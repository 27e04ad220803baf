"""Everything that needs TensorFlow (the only package of shards that imports it): tf.data and
Keras adapters, training, the trainer actor, prediction."""
