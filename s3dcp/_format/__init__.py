"""The checkpoint format: object names, shard files, tensor archives, ``.metadata``, digests.

Nothing here talks to S3: these modules turn items into bytes and back.
"""
