"""The selector service: gRPC servicer, job coordinator, Ray scorer actors, persistence."""
