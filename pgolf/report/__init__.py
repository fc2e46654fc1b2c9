"""Experiment tooling outside the pipeline: seed significance, challenge records folders, offline plot rendering.

Each module is a command (``python -m pgolf.report.<name> --help``); none of them is a DVC stage, and none is
imported by a stage, so they are not part of the code bundle.
"""
