"""Benchmarks: s3exchange against webdataset, raw boto3 and s3torchconnector on one machine.

``python benchmarks/run.py [--quick]`` runs the suite; see :mod:`benchmarks.run`.
"""
