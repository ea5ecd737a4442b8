"""Generated from protos/quartet/score/v1. Do not edit; run scripts/gen_protos.py."""
