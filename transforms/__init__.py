"""Payload transforms (images, text, tables -> tensors); they arrive with the transforms issue."""
