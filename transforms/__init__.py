"""Payload transforms (images, text, tables -> tensors), registered by kind in `transforms.base`."""

from transforms import image, table, text  # noqa: F401  (registers the kinds)
