"""Photos in, tensors out: decoding (`images`), finding, checking and splitting photos
(`scan`), tf.data pipelines (`pipeline`), training augmentation (`augment`) and the
`pawnet data show` preview (`preview`)."""
