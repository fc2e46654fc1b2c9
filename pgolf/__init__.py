"""pgolf: the Parameter Golf record recipe as a DVC pipeline.

Stages live in ``stages/`` (thin entry points); everything with logic lives in this package.
"""

__version__ = "0.1.0"
