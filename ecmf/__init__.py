"""ECMF: enhanced cross-modal fusion for multimodal emotion recognition, semi-supervised on Ray.

`import ecmf` stays light: torch, transformers, decord and Ray load inside the stage that needs
them.
"""

__version__ = "0.1.0"
