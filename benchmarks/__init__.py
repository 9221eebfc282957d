"""Benchmarks: s3exchange against webdataset, raw boto3 and s3torchconnector on one machine.

A package, run from the repository root: ``python -m benchmarks.run [--quick]`` (the suite, see
:mod:`benchmarks.suite`) and ``python -m benchmarks.profiling`` (py-spy profiles of our reader).
"""
