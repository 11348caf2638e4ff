"""Signature Version 2 against Walrus: boto 2.49 (its default for S3, at
`/` and at Eucalyptus' `/services/Walrus`) and botocore's `s3` signer, by
header and by presigned query.

Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GUMTREE_S3_ENDPOINT.
"""

import os
import urllib.error
import urllib.parse
import urllib.request

import boto
import boto3
from boto.s3.connection import OrdinaryCallingFormat, S3Connection
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["GUMTREE_S3_ENDPOINT"]
KEY = os.environ["AWS_ACCESS_KEY_ID"]
SECRET = os.environ["AWS_SECRET_ACCESS_KEY"]
url = urllib.parse.urlparse(ENDPOINT)


def get(u, method="GET", data=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(u, data=data, method=method)) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(name):
    print(f"ok: {name}", flush=True)


print("boto", boto.__version__)
for path in ["/", "/services/Walrus"]:
    conn = S3Connection(
        KEY, SECRET, host=url.hostname, port=url.port, is_secure=False,
        calling_format=OrdinaryCallingFormat(), path=path,
    )
    name = "boto2-" + ("root" if path == "/" else "walrus")
    bucket = conn.create_bucket(name)
    k = bucket.new_key("hello/boto2.txt")
    k.set_contents_from_string("written by boto 2\n", headers={"Content-Type": "text/plain"},
                               policy="private")
    k.set_metadata("who", "boto2")
    assert bucket.get_key("hello/boto2.txt").get_contents_as_string() == b"written by boto 2\n"
    assert [x.name for x in bucket.list(prefix="hello/")] == ["hello/boto2.txt"]
    assert name in [b.name for b in conn.get_all_buckets()]
    # A V2 presigned URL works without credentials, until it expires.
    signed = k.generate_url(120)
    assert "Signature=" in signed and "AWSAccessKeyId=" in signed, signed
    assert get(signed) == (200, b"written by boto 2\n"), get(signed)
    expired = k.generate_url(-10)
    status, body = get(expired)
    assert status == 403 and b"expired" in body, (status, body)
    tampered = signed.replace("boto2.txt", "other.txt")
    status, body = get(tampered)
    assert status == 403 and b"SignatureDoesNotMatch" in body, (status, body)
    acl = bucket.get_acl()
    assert acl.owner.id, acl
    k.set_acl("public-read")
    assert get(f"{ENDPOINT}/{name}/hello/boto2.txt")[0] == 200
    # ListObjectVersions signed the old way (`versions` is a signed sub-resource).
    versions = [(v.name, v.version_id, v.is_latest) for v in bucket.list_versions(prefix="hello/")]
    assert versions == [("hello/boto2.txt", "null", True)], versions
    bucket.delete_key("hello/boto2.txt")
    assert bucket.get_key("hello/boto2.txt") is None
    conn.delete_bucket(name)
    check(f"boto 2 S3 at {path}: bucket, put, get, list, list versions, presigned, ACL, delete")

bad = S3Connection(KEY, "wrong-secret", host=url.hostname, port=url.port, is_secure=False,
                   calling_format=OrdinaryCallingFormat())
try:
    bad.get_all_buckets()
    raise AssertionError("a wrong secret must be refused")
except boto.exception.S3ResponseError as e:
    assert e.status == 403 and e.error_code == "SignatureDoesNotMatch", (e.status, e.error_code)
check("boto 2 with a wrong secret: SignatureDoesNotMatch")

s3 = boto3.client("s3", endpoint_url=ENDPOINT, region_name="gumtree",
                  config=Config(signature_version="s3", s3={"addressing_style": "path"}))
s3.create_bucket(Bucket="botocore-v2", CreateBucketConfiguration={"LocationConstraint": "gumtree"})
s3.put_object(Bucket="botocore-v2", Key="a b+c.txt", Body=b"v2 by botocore", Metadata={"k": "v"})
assert s3.get_object(Bucket="botocore-v2", Key="a b+c.txt")["Body"].read() == b"v2 by botocore"
u = s3.generate_presigned_url("get_object", Params={"Bucket": "botocore-v2", "Key": "a b+c.txt"},
                              ExpiresIn=60)
assert "Signature=" in u, u
assert get(u) == (200, b"v2 by botocore"), get(u)
up = s3.create_multipart_upload(Bucket="botocore-v2", Key="mp")["UploadId"]
p = s3.upload_part(Bucket="botocore-v2", Key="mp", UploadId=up, PartNumber=1, Body=b"one part")
s3.complete_multipart_upload(Bucket="botocore-v2", Key="mp", UploadId=up,
                             MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]})
assert s3.get_object(Bucket="botocore-v2", Key="mp")["Body"].read() == b"one part"
for k in ["a b+c.txt", "mp"]:
    s3.delete_object(Bucket="botocore-v2", Key=k)
s3.delete_bucket(Bucket="botocore-v2")
check("botocore SigV2 (header and presigned): put, get, multipart with subresources, delete")
print("sigv2: all checks passed")
