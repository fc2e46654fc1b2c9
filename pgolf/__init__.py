"""pgolf: the Parameter Golf record recipe as a DVC pipeline.

The stages live in ``stages/`` (each script is its stage: arguments, wiring, outputs and metrics); this package
holds the math and the shared mechanics, and never imports ``stages``. Its packages import only downward, in the
order the README's layout section gives (a test checks it).
"""

__version__ = "0.1.0"
