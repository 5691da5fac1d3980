"""The loss names the CLI offers, importable without torch (so `pipeline --help` stays fast).

train.losses.registry refuses to import if its table of losses has other names than these.
"""

LOSS_NAMES = ("ce", "balanced-ce", "focal", "focal-star", "ghm", "pisa", "pisa-center", "random",
              "ohem")  # fmt: skip
REG_LOSS_NAMES = ("smooth-l1", "l1", "asl1", "giou")
# The detectors (--detector), and the R-CNN head losses the two-stage one takes as --loss.
DETECTORS = ("retinanet", "faster-rcnn")
HEAD_LOSS_NAMES = ("random", "ohem", "pisa")
