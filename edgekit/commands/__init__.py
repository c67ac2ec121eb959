"""The ``edgekit`` subcommands, one module each.

Each module must stay cheap to import: TensorFlow and Keras are imported inside the command that
needs them, so ``edgekit --help``, ``predict`` and ``profile`` work with only the base install.
"""
