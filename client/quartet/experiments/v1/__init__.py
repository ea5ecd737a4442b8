"""Generated from protos/quartet/experiments/v1. Do not edit; run scripts/gen_protos.py."""
