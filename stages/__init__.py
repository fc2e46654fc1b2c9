"""Stage entry points, one per DVC stage; run as ``python -m stages.<name>``."""
