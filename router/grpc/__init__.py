"""The gRPC front: servicers that translate wire messages and call the dataplane."""
