"""Generated from protos/buf/validate. Do not edit; run scripts/gen_protos.py."""
