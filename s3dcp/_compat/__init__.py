"""Every private name of another library that s3dcp touches, one module per library.

A fast path that reaches below a public API looks its names up here. Each
lookup that fails (a release moved or changed the name) returns ``None`` or a
plain public equivalent and logs once at DEBUG, so the caller takes the plain
path: a changed dependency makes s3dcp slower, never breaks a save or a load.
"""
