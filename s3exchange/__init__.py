"""s3exchange: exchange training data through S3-compatible object storage."""
