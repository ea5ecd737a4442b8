"""Generated from protos/quartet/api. Do not edit; run scripts/gen_protos.py."""
