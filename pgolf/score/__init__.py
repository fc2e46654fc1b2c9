"""The one scorer every val_bpb of the ladder comes from: the validation data and its byte counts (``bpb``), documents
and windows (``documents``), the running sums and the evaluation context (``scores``), compiled scoring
(``compile``), the scorer itself and the ladder's documents (``scorer``), and the unigram floor (``unigram``).
Training validation, export, quantize and every evaluation mode use it."""
