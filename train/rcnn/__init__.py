"""Pieces of the two-stage (Faster R-CNN) detector head: PISA for its RoI losses."""
