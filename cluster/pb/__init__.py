"""Generated gRPC/protobuf code for proto/billing/v1 (scripts/gen_protos.py)."""
