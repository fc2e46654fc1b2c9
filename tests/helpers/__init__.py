"""What the test files share, one module per topic; import a name from its module (``from tests.helpers.eval
import run``). Fixtures are in the conftest.py files, not here.

- ``common``: the repository root, the golden folder, dvc.yaml's stages, skip markers, a free port for gloo
- ``config``: the params section builders: params.yaml (the record's model: presets/record_1855.yaml) with the
  tests' small values and a call's overrides deep-merged on top, validated by the section's model
- ``data``: the embedded corpus, documents folders, the data stages (prepare, tokenizer, tokenize), token shards
- ``model``: toy models and random inputs
- ``eval``: character-level validation streams, the evaluation tests' tiny model, one mode's run
- ``score``: a synthetic validation stream and the one scorer's totals of token-only models
- ``train``: the train stage on the toy model
- ``quant``: matrices, Hessians, models and configs of the quantizer tests
- ``compress``: quantize-stage outputs, submissions (compress + bundle), entries for the coding pool
- ``kernels``: the Triton kernels against their eager references (also run in a fresh interpreter process)
- ``tile_order``: the Triton matmul's program-to-tile order, read back (imports triton; interpreter process)
- ``report``: scratch git + DVC repositories, experiment-table cells, the summary stage's inputs
"""
