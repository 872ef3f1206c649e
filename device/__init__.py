"""Lean on-device side: preprocessing contract, model metadata, interpreter and CLI.

Imports only the standard library, numpy, pillow and a TFLite interpreter.
Never TensorFlow, never train/ or convert/.
"""
