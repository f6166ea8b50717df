"""Storage targets (issue 24): S3-compatible buckets recordings are uploaded to."""
