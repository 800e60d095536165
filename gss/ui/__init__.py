"""The signal explorer page (`gss ui`): read-only, over the gRPC API and the galaxies' topics."""
