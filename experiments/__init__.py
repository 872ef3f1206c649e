"""Research harness: probes and ablations behind docs/research.md (not the product)."""


def open_model(path):
    """The device Classifier of an int8 model, or None after one error line on stderr (the probes' shared start:
    the caller returns exit 2)."""
    import sys

    from device.metadata import ModelError
    from device.runtime import Classifier

    try:
        return Classifier(path)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
