"""The snapshot contract batch readers rely on: the Hive layout and the Thrift IDL."""
