"""Convert stage: Keras models -> TFLite variants with metadata, int8 audit and parity gate."""
