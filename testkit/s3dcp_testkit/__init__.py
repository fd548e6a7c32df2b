"""Local S3 servers for s3dcp's tests, benchmarks and examples, one concept per module.

* ``moto_server``: moto's S3 server in a child process (``local_s3`` points
  the AWS variables at one with a bucket, for the examples);
* ``fault_proxy``: a proxy in front of a server that counts requests and
  injects S3's and the network's failures;
* ``ceph_rgw``: a throw-away single-node Ceph RGW
  (``python -m s3dcp_testkit.ceph_rgw start|stop --dir DIR``);
* ``target``: which server the integration suite talks to;
* ``forwarder``: a counting HTTP forwarder that can terminate TLS;
* ``wan``: the forwarder as a distant S3: first-byte latency, MB/s per connection, requests in flight;
* ``memory_store``: an S3 store in this process's memory (behind ``wan`` in the benchmarks);
* ``null_sink``: an S3 server that takes uploads and keeps nothing;
* ``loopback``: a socketserver run on a background thread, and its counts;
* ``http_framing``: HTTP/1.1 message heads and bodies (length or chunked);
* ``certificates``: a throw-away CA and a server certificate for 127.0.0.1;
* ``ports``: free ports on 127.0.0.1.

Installed (editable) next to s3dcp by the Makefile: ``pip install -e testkit``.
"""
