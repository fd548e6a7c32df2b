"""S3 mechanics: the client and its hooks, retries, object operations, uploads and ranged reads.

Nothing here knows about DCP: these modules move bytes to and from S3 objects.
"""
