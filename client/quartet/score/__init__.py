"""Generated from protos/quartet/score. Do not edit; run scripts/gen_protos.py."""
