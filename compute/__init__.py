"""Compute plugins: signals as decorated Python functions, run locally or on Flink."""
