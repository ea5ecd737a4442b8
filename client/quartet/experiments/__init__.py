"""Generated from protos/quartet/experiments. Do not edit; run scripts/gen_protos.py."""
