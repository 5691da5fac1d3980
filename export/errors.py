"""Errors of the export side the user can act on: the machine or toolchain cannot build what was
asked (no GPU, no TensorRT or OpenVINO, a version too old, a parser or builder that refuses the
graph). Bad input (a dataset, a checkpoint, an option value) stays train's InputError."""

from common.errors import UserError


class ExportError(UserError, RuntimeError):
    """This machine or its toolchain cannot export as asked; the message says what is missing."""
