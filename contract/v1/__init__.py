"""Generated from proto/gss/v1 by `make proto`. Do not edit: change the .proto and regenerate."""
