"""boto3 against Walrus, with its default checksum settings.

Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the owner),
GUMTREE_OTHER_KEY / GUMTREE_OTHER_SECRET (a second account),
GUMTREE_S3_ENDPOINT, GUMTREE_CA_BUNDLE (for https), GUMTREE_BUCKET.
Prints one line per check; any failed assertion exits non-zero.
"""

import base64
import hashlib
import io
import os
import ssl
import sys
import urllib.error
import urllib.request
import zlib

import boto3
import botocore
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["GUMTREE_S3_ENDPOINT"]
CA = os.environ.get("GUMTREE_CA_BUNDLE") or None
BUCKET = os.environ.get("GUMTREE_BUCKET", "boto3-bucket")
MiB = 1024 * 1024


def client(key=None, secret=None, **config):
    kwargs = {}
    if key:
        kwargs = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="gumtree",
        verify=CA if CA else True,
        config=Config(retries={"max_attempts": 1}, **config),
        **kwargs,
    )


def code_of(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]
    raise AssertionError(f"{fn.__name__} should have failed")


def anonymous_get(url):
    ctx = ssl.create_default_context(cafile=CA) if CA else None
    try:
        with urllib.request.urlopen(url, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(name):
    print(f"ok: {name}", flush=True)


def noise(n, seed):
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


s3 = client()
other = client(os.environ["GUMTREE_OTHER_KEY"], os.environ["GUMTREE_OTHER_SECRET"])
print("boto3", boto3.__version__, "botocore", botocore.__version__, "endpoint", ENDPOINT)

# Buckets.
s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "gumtree"})
assert code_of(s3.create_bucket, Bucket=BUCKET) == ("BucketAlreadyOwnedByYou", 409)
assert code_of(other.create_bucket, Bucket=BUCKET) == ("BucketAlreadyExists", 409)
assert code_of(s3.create_bucket, Bucket="Bad_Name") == ("InvalidBucketName", 400)
s3.head_bucket(Bucket=BUCKET)
assert s3.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == "gumtree"
assert BUCKET in [b["Name"] for b in s3.list_buckets()["Buckets"]]
assert BUCKET not in [b["Name"] for b in other.list_buckets()["Buckets"]]
# This cloud is one region: a bucket anywhere else is refused, and not made.
assert code_of(s3.create_bucket, Bucket=BUCKET + "-nowhere",
               CreateBucketConfiguration={"LocationConstraint": "nowhere"}) == ("InvalidLocationConstraint", 400)
assert code_of(s3.head_bucket, Bucket=BUCKET + "-nowhere")[1] == 404
check("buckets")

# Objects, with boto3's default checksum (CRC32 on recent versions).
body = b"hello, walrus\n" * 1000
put = s3.put_object(
    Bucket=BUCKET, Key="dir/hello.txt", Body=body, ContentType="text/plain",
    Metadata={"colour": "green"}, CacheControl="max-age=60",
)
assert put["ETag"] == '"%s"' % hashlib.md5(body).hexdigest(), put["ETag"]
got = s3.get_object(Bucket=BUCKET, Key="dir/hello.txt", ChecksumMode="ENABLED")
assert got["Body"].read() == body
assert got["ContentType"] == "text/plain" and got["Metadata"] == {"colour": "green"}
assert got["CacheControl"] == "max-age=60"
# User metadata is at most 2 KB (names and values), as in S3; more stores nothing.
assert code_of(s3.put_object, Bucket=BUCKET, Key="fat-meta", Body=b"x",
               Metadata={"a": "v" * 2048}) == ("MetadataTooLarge", 400)
assert code_of(s3.head_object, Bucket=BUCKET, Key="fat-meta")[1] == 404
s3.put_object(Bucket=BUCKET, Key="fat-meta", Body=b"x", Metadata={"a": "v" * 2047})
assert len(s3.head_object(Bucket=BUCKET, Key="fat-meta")["Metadata"]["a"]) == 2047
s3.delete_object(Bucket=BUCKET, Key="fat-meta")
crc = base64.b64encode((zlib.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big")).decode()
if "ChecksumCRC32" in put:
    assert got.get("ChecksumCRC32") == crc, (got.get("ChecksumCRC32"), crc)
head = s3.head_object(Bucket=BUCKET, Key="dir/hello.txt")
assert head["ContentLength"] == len(body)
check("put/get/head with metadata")

from botocore.httpchecksum import _CHECKSUM_CLS  # what this botocore can compute
for algorithm in [a for a in ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"]
                  if a.lower() in _CHECKSUM_CLS]:
    r = s3.put_object(Bucket=BUCKET, Key=f"sum/{algorithm}", Body=body, ChecksumAlgorithm=algorithm)
    assert f"Checksum{algorithm}" in r, r
    g = s3.get_object(Bucket=BUCKET, Key=f"sum/{algorithm}", ChecksumMode="ENABLED")
    assert g["Body"].read() == body and g[f"Checksum{algorithm}"] == r[f"Checksum{algorithm}"]
check("checksums stored and returned: " + ", ".join(a for a in _CHECKSUM_CLS))

# A body that does not match what the client declared is refused, and nothing is stored.
assert code_of(
    s3.put_object, Bucket=BUCKET, Key="bad/crc", Body=body, ChecksumCRC32="AAAAAA=="
) == ("BadDigest", 400)
assert code_of(
    s3.put_object, Bucket=BUCKET, Key="bad/md5", Body=body,
    ContentMD5=base64.b64encode(hashlib.md5(b"other").digest()).decode(),
) == ("BadDigest", 400)
assert code_of(s3.head_object, Bucket=BUCKET, Key="bad/crc")[1] == 404
assert code_of(s3.head_object, Bucket=BUCKET, Key="bad/md5")[1] == 404
check("mismatched checksum and Content-MD5 refused, nothing stored")

# Ranges and conditions.
r = s3.get_object(Bucket=BUCKET, Key="dir/hello.txt", Range="bytes=7-12")
assert r["Body"].read() == b"walrus" and r["ContentRange"] == f"bytes 7-12/{len(body)}"
assert r["ResponseMetadata"]["HTTPStatusCode"] == 206
assert code_of(s3.get_object, Bucket=BUCKET, Key="dir/hello.txt", Range=f"bytes={len(body)}-") == (
    "InvalidRange", 416)
etag = put["ETag"]
assert code_of(s3.get_object, Bucket=BUCKET, Key="dir/hello.txt", IfNoneMatch=etag)[1] == 304
assert code_of(s3.get_object, Bucket=BUCKET, Key="dir/hello.txt", IfMatch='"nope"') == (
    "PreconditionFailed", 412)
r = s3.get_object(Bucket=BUCKET, Key="dir/hello.txt", ResponseContentType="application/x-test",
                  ResponseContentDisposition="attachment; filename=h.txt")
assert r["ContentType"] == "application/x-test"
assert r["ContentDisposition"] == "attachment; filename=h.txt"
check("ranges, conditions, response overrides")

# Listings, v1 and v2, paged.
for i in range(7):
    s3.put_object(Bucket=BUCKET, Key=f"list/k{i}", Body=b"x")
s3.put_object(Bucket=BUCKET, Key="list/sub/a", Body=b"x")
s3.put_object(Bucket=BUCKET, Key="list/sub/b", Body=b"x")
v2 = s3.get_paginator("list_objects_v2").paginate(
    Bucket=BUCKET, Prefix="list/", Delimiter="/", PaginationConfig={"PageSize": 3})
keys, prefixes, pages = [], [], 0
for page in v2:
    pages += 1
    keys += [o["Key"] for o in page.get("Contents", [])]
    prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
assert keys == [f"list/k{i}" for i in range(7)], keys
assert prefixes == ["list/sub/"], prefixes
assert pages == 3, pages
v1 = s3.get_paginator("list_objects").paginate(
    Bucket=BUCKET, Prefix="list/", PaginationConfig={"PageSize": 4})
keys1 = [o["Key"] for page in v1 for o in page.get("Contents", [])]
assert keys1 == [f"list/k{i}" for i in range(7)] + ["list/sub/a", "list/sub/b"], keys1
r = s3.list_objects_v2(Bucket=BUCKET, Prefix="list/", StartAfter="list/k5")
assert [o["Key"] for o in r["Contents"]] == ["list/k6", "list/sub/a", "list/sub/b"]
s3.put_object(Bucket=BUCKET, Key="odd key+&=é", Body=b"x")
r = s3.list_objects_v2(Bucket=BUCKET, Prefix="odd")
assert [o["Key"] for o in r["Contents"]] == ["odd key+&=é"], r["Contents"]
check("ListObjects v1 and v2: prefix, delimiter, paging, start-after, url encoding")

# Multipart through the transfer manager: 12 MiB in 5 MiB parts.
data = noise(12 * MiB + 3, 1)
cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
s3.upload_fileobj(io.BytesIO(data), BUCKET, "big/object", Config=cfg)
head = s3.head_object(Bucket=BUCKET, Key="big/object")
assert head["ETag"].endswith('-3"'), head["ETag"]
assert head["ContentLength"] == len(data)
out = io.BytesIO()
s3.download_fileobj(BUCKET, "big/object", out, Config=cfg)
assert out.getvalue() == data
check("multipart upload_fileobj / download_fileobj")

# Multipart, call by call.
up = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/manual", ContentType="application/x-parts")
uid = up["UploadId"]
p1 = s3.upload_part(Bucket=BUCKET, Key="mp/manual", UploadId=uid, PartNumber=1, Body=data[:5 * MiB])
p2 = s3.upload_part(Bucket=BUCKET, Key="mp/manual", UploadId=uid, PartNumber=2, Body=b"tail")
parts = s3.list_parts(Bucket=BUCKET, Key="mp/manual", UploadId=uid)["Parts"]
assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 5 * MiB), (2, 4)], parts
uploads = s3.list_multipart_uploads(Bucket=BUCKET)["Uploads"]
assert [(u["Key"], u["UploadId"]) for u in uploads] == [("mp/manual", uid)], uploads
assert code_of(
    s3.complete_multipart_upload, Bucket=BUCKET, Key="mp/manual", UploadId=uid,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"0000"'}]},
) == ("InvalidPart", 400)
assert code_of(
    s3.complete_multipart_upload, Bucket=BUCKET, Key="mp/manual", UploadId=uid,
    MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": p2["ETag"]}, {"PartNumber": 1, "ETag": p1["ETag"]}]},
) == ("InvalidPartOrder", 400)
small = s3.create_multipart_upload(Bucket=BUCKET, Key="mp/small")["UploadId"]
s1 = s3.upload_part(Bucket=BUCKET, Key="mp/small", UploadId=small, PartNumber=1, Body=b"a")
s2 = s3.upload_part(Bucket=BUCKET, Key="mp/small", UploadId=small, PartNumber=2, Body=b"b")
assert code_of(
    s3.complete_multipart_upload, Bucket=BUCKET, Key="mp/small", UploadId=small,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": s1["ETag"]}, {"PartNumber": 2, "ETag": s2["ETag"]}]},
) == ("EntityTooSmall", 400)
s3.abort_multipart_upload(Bucket=BUCKET, Key="mp/small", UploadId=small)
assert code_of(s3.list_parts, Bucket=BUCKET, Key="mp/small", UploadId=small) == ("NoSuchUpload", 404)
done = s3.complete_multipart_upload(
    Bucket=BUCKET, Key="mp/manual", UploadId=uid,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1["ETag"]}, {"PartNumber": 2, "ETag": p2["ETag"]}]},
)
md5s = hashlib.md5(hashlib.md5(data[:5 * MiB]).digest() + hashlib.md5(b"tail").digest()).hexdigest()
assert done["ETag"] == f'"{md5s}-2"', done["ETag"]
got = s3.get_object(Bucket=BUCKET, Key="mp/manual")
assert got["Body"].read() == data[:5 * MiB] + b"tail" and got["ContentType"] == "application/x-parts"
assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
assert code_of(s3.list_parts, Bucket=BUCKET, Key="mp/manual", UploadId=uid) == ("NoSuchUpload", 404)
check("multipart: parts, listings, InvalidPart, InvalidPartOrder, EntityTooSmall, abort, complete")

# Copies: same bucket, across buckets, metadata replaced, part copies.
s3.create_bucket(Bucket=BUCKET + "-2", CreateBucketConfiguration={"LocationConstraint": "gumtree"})
c = s3.copy_object(Bucket=BUCKET, Key="copy/a", CopySource={"Bucket": BUCKET, "Key": "dir/hello.txt"})
assert c["CopyObjectResult"]["ETag"] == etag
g = s3.get_object(Bucket=BUCKET, Key="copy/a")
assert g["Body"].read() == body and g["Metadata"] == {"colour": "green"}
s3.copy_object(Bucket=BUCKET + "-2", Key="x", CopySource=f"{BUCKET}/odd key+&=é",
               MetadataDirective="REPLACE", Metadata={"new": "yes"}, ContentType="text/x-new")
g = s3.get_object(Bucket=BUCKET + "-2", Key="x")
assert g["Body"].read() == b"x" and g["Metadata"] == {"new": "yes"} and g["ContentType"] == "text/x-new"
assert code_of(s3.copy_object, Bucket=BUCKET, Key="copy/a",
               CopySource={"Bucket": BUCKET, "Key": "copy/a"}) == ("InvalidRequest", 400)
assert code_of(s3.copy_object, Bucket=BUCKET, Key="copy/b",
               CopySource={"Bucket": BUCKET, "Key": "missing"}) == ("NoSuchKey", 404)
uid = s3.create_multipart_upload(Bucket=BUCKET, Key="copy/parts")["UploadId"]
cp1 = s3.upload_part_copy(Bucket=BUCKET, Key="copy/parts", UploadId=uid, PartNumber=1,
                          CopySource={"Bucket": BUCKET, "Key": "big/object"},
                          CopySourceRange=f"bytes=0-{5 * MiB - 1}")
cp2 = s3.upload_part_copy(Bucket=BUCKET, Key="copy/parts", UploadId=uid, PartNumber=2,
                          CopySource={"Bucket": BUCKET, "Key": "dir/hello.txt"})
s3.complete_multipart_upload(Bucket=BUCKET, Key="copy/parts", UploadId=uid, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": cp1["CopyPartResult"]["ETag"]},
    {"PartNumber": 2, "ETag": cp2["CopyPartResult"]["ETag"]}]})
assert s3.get_object(Bucket=BUCKET, Key="copy/parts")["Body"].read() == data[:5 * MiB] + body
check("CopyObject (COPY, REPLACE, across buckets) and UploadPartCopy with ranges")

# ACLs: stored, returned, enforced for anonymous and other accounts.
public_url = f"{ENDPOINT}/{BUCKET}/dir/hello.txt"
assert anonymous_get(public_url)[0] == 403
assert code_of(other.get_object, Bucket=BUCKET, Key="dir/hello.txt") == ("AccessDenied", 403)
assert code_of(other.list_objects_v2, Bucket=BUCKET) == ("AccessDenied", 403)
assert code_of(other.put_object, Bucket=BUCKET, Key="intruder", Body=b"x") == ("AccessDenied", 403)
assert code_of(other.delete_object, Bucket=BUCKET, Key="dir/hello.txt") == ("AccessDenied", 403)
assert code_of(other.delete_bucket, Bucket=BUCKET) == ("AccessDenied", 403)
s3.put_object_acl(Bucket=BUCKET, Key="dir/hello.txt", ACL="public-read")
acl = s3.get_object_acl(Bucket=BUCKET, Key="dir/hello.txt")
grants = {(g["Grantee"].get("URI") or g["Grantee"].get("ID"), g["Permission"]) for g in acl["Grants"]}
assert ("http://acs.amazonaws.com/groups/global/AllUsers", "READ") in grants, grants
assert anonymous_get(public_url) == (200, body)
assert other.get_object(Bucket=BUCKET, Key="dir/hello.txt")["Body"].read() == body
s3.put_object(Bucket=BUCKET, Key="authn", Body=b"signed readers", ACL="authenticated-read")
assert other.get_object(Bucket=BUCKET, Key="authn")["Body"].read() == b"signed readers"
assert anonymous_get(f"{ENDPOINT}/{BUCKET}/authn")[0] == 403
assert code_of(other.get_object_acl, Bucket=BUCKET, Key="authn") == ("AccessDenied", 403)
s3.put_bucket_acl(Bucket=BUCKET, ACL="public-read")
acl = s3.get_bucket_acl(Bucket=BUCKET)
assert any(g["Grantee"].get("URI", "").endswith("AllUsers") for g in acl["Grants"]), acl
status, listing = anonymous_get(f"{ENDPOINT}/{BUCKET}?prefix=dir/")
assert status == 200 and b"<Key>dir/hello.txt</Key>" in listing, listing
assert code_of(other.put_object, Bucket=BUCKET, Key="intruder", Body=b"x") == ("AccessDenied", 403)
s3.put_bucket_acl(Bucket=BUCKET, ACL="private")
assert anonymous_get(f"{ENDPOINT}/{BUCKET}?prefix=dir/")[0] == 403
check("canned ACLs: Get/Put Bucket/Object ACL, anonymous and cross-account enforcement")

# Presigned URLs (SigV4 query).
url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "copy/a"}, ExpiresIn=60)
assert anonymous_get(url) == (200, body)
put_url = s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "presigned-put"}, ExpiresIn=60)
req = urllib.request.Request(put_url, data=b"sent with a URL", method="PUT")
ctx = ssl.create_default_context(cafile=CA) if CA else None
with urllib.request.urlopen(req, context=ctx) as r:
    assert r.status == 200
assert s3.get_object(Bucket=BUCKET, Key="presigned-put")["Body"].read() == b"sent with a URL"
check("presigned GET and PUT")

# ListObjectVersions on a bucket that never had versioning: one version per
# object, "null", the latest; no delete markers; paging by key marker.
VB = BUCKET + "-versions"
s3.create_bucket(Bucket=VB)
keys = ["a", "dir/b", "dir/c", "dir/sub/d", "e f+g", "z"]
for k in keys:
    s3.put_object(Bucket=VB, Key=k, Body=k.encode())
r = s3.list_object_versions(Bucket=VB)
assert [v["Key"] for v in r["Versions"]] == keys, r
for v in r["Versions"]:
    head = s3.head_object(Bucket=VB, Key=v["Key"])
    assert v["VersionId"] == "null" and v["IsLatest"] is True, v
    assert v["ETag"] == head["ETag"] and v["Size"] == len(v["Key"]), (v, head)
    assert v["Owner"]["ID"] and v["StorageClass"] == "STANDARD", v
assert "DeleteMarkers" not in r and r["IsTruncated"] is False and r["MaxKeys"] == 1000, r
r = s3.list_object_versions(Bucket=VB, Prefix="dir/", Delimiter="/")
assert [v["Key"] for v in r["Versions"]] == ["dir/b", "dir/c"], r
assert r["CommonPrefixes"] == [{"Prefix": "dir/sub/"}] and r["Prefix"] == "dir/", r
r = s3.list_object_versions(Bucket=VB, KeyMarker="dir/b", VersionIdMarker="null")
assert [v["Key"] for v in r["Versions"]] == keys[2:], r
assert r["KeyMarker"] == "dir/b" and r["VersionIdMarker"] == "null", r
r = s3.list_object_versions(Bucket=VB, MaxKeys=2)
assert r["IsTruncated"] is True and r["NextKeyMarker"] == "dir/b" and r["NextVersionIdMarker"] == "null", r
pages = list(s3.get_paginator("list_object_versions").paginate(Bucket=VB, PaginationConfig={"PageSize": 2}))
assert len(pages) == 3 and [v["Key"] for p in pages for v in p["Versions"]] == keys, pages
pages = list(s3.get_paginator("list_object_versions").paginate(
    Bucket=VB, Delimiter="/", PaginationConfig={"PageSize": 1}))
seen = [v["Key"] for p in pages for v in p.get("Versions", [])]
seen_prefixes = [c["Prefix"] for p in pages for c in p.get("CommonPrefixes", [])]
assert seen == ["a", "e f+g", "z"] and seen_prefixes == ["dir/"], (seen, seen_prefixes)
# encoding-type=url: boto3 asks for it by default and decodes the keys back
# (above); asked for by the caller, the keys stay encoded.
raw = s3.list_object_versions(Bucket=VB, Prefix="e ", EncodingType="url")
assert [v["Key"] for v in raw["Versions"]] == ["e%20f%2Bg"] and raw["Prefix"] == "e%20", raw
assert code_of(s3.list_object_versions, Bucket=VB, VersionIdMarker="null") == ("InvalidArgument", 400)
assert code_of(s3.list_object_versions, Bucket=VB, KeyMarker="a", VersionIdMarker="nope") == (
    "InvalidArgument", 400)
assert code_of(s3.list_object_versions, Bucket=VB, MaxKeys=-1) == ("InvalidArgument", 400)
assert code_of(other.list_object_versions, Bucket=VB) == ("AccessDenied", 403)
check("ListObjectVersions: null versions, prefix, delimiter, markers, paging, encoding, errors")
# versionId=null works on GET, HEAD and DELETE; any other id is refused.
assert s3.get_object(Bucket=VB, Key="a", VersionId="null")["Body"].read() == b"a"
assert s3.head_object(Bucket=VB, Key="a", VersionId="null")["ContentLength"] == 1
assert code_of(s3.get_object, Bucket=VB, Key="a", VersionId="3HL4kqtJlcpXroDTDmjVBH40Nrjfkd") == (
    "InvalidArgument", 400)
s3.delete_object(Bucket=VB, Key="a", VersionId="null")
assert code_of(s3.head_object, Bucket=VB, Key="a")[1] == 404
r = s3.delete_objects(Bucket=VB, Delete={"Objects": [{"Key": "z", "VersionId": "null"},
                                                     {"Key": "dir/b", "VersionId": "not-a-version"}]})
assert r["Deleted"] == [{"Key": "z", "VersionId": "null"}], r
assert [(e["Key"], e["Code"]) for e in r["Errors"]] == [("dir/b", "NoSuchVersion")], r
assert s3.get_object(Bucket=VB, Key="dir/b")["Body"].read() == b"dir/b", "a failed entry deletes nothing"
# What SDK helpers do to empty a bucket before deleting it.
resource = boto3.resource("s3", endpoint_url=ENDPOINT, region_name="gumtree", verify=CA if CA else True)
resource.Bucket(VB).object_versions.delete()
assert "Versions" not in s3.list_object_versions(Bucket=VB)
s3.delete_bucket(Bucket=VB)
check("versionId=null on GET, HEAD, DELETE and DeleteObjects; emptying a bucket by its versions")

# DeleteObjects (boto3 sends no Content-MD5), then the bucket.
assert code_of(s3.delete_bucket, Bucket=BUCKET) == ("BucketNotEmpty", 409)
for b in [BUCKET, BUCKET + "-2"]:
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=b)
            for o in p.get("Contents", [])]
    r = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted(keys), r
    assert "Errors" not in r, r
    s3.delete_bucket(Bucket=b)
assert code_of(s3.head_bucket, Bucket=BUCKET)[1] == 404
assert code_of(s3.get_object, Bucket=BUCKET, Key="x") == ("NoSuchBucket", 404)
check("DeleteObjects and DeleteBucket")
print("boto3: all checks passed")
