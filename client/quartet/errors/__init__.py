"""Generated from protos/quartet/errors. Do not edit; run scripts/gen_protos.py."""
