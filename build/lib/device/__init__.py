"""Lean on-device side: preprocessing contract, model metadata, interpreter and CLI.

Imports only the standard library, numpy, pillow, a TFLite interpreter and (for DICOM input) pydicom.
Never TensorFlow, never train/ or convert/.
"""
