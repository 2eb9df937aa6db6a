"""Silence exactly one notice: transformers' "`<X>ImageProcessor` requires torchvision (not installed); falling
back to `<X>ImageProcessorPil`", which diffusers' imports trigger on every machine without torchvision (this
project's machines). Every other warning, from transformers or anyone, still shows."""

from __future__ import annotations

import logging

_FALLBACK = "requires torchvision (not installed); falling back to"


class _TorchvisionFallbackNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _FALLBACK not in record.getMessage()


def install() -> None:
    # the notice is logged by this logger (transformers.utils.import_utils); a filter on it sees only its records
    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(isinstance(f, _TorchvisionFallbackNotice) for f in logger.filters):
        logger.addFilter(_TorchvisionFallbackNotice())
