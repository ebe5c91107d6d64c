"""Generated protobuf and gRPC code (do not edit; regenerate from protos/)."""
