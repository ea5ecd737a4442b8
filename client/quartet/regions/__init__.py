"""Generated from protos/quartet/regions. Do not edit; run scripts/gen_protos.py."""
