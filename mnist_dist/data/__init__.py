"""The data: IDX files, TFDS or synthetic, read, checked, augmented and fed
to the replicas as sharded tf.data pipelines (`input_pipeline`)."""
