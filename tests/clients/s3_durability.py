"""Uploads objects until the server goes away, printing each acknowledged
one (`acked KEY MD5`), or checks that a list of acknowledged objects is all
there (`verify FILE`).

Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GUMTREE_S3_ENDPOINT.
"""

import hashlib
import os
import sys

import boto3
from botocore.config import Config

s3 = boto3.client(
    "s3", endpoint_url=os.environ["GUMTREE_S3_ENDPOINT"], region_name="gumtree",
    config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
)
BUCKET = "durable"


def body(i):
    seed = hashlib.sha256(str(i).encode()).digest()
    return (seed * ((i * 977) % 9000 + 1))[: (i * 7919) % 300_000]


if sys.argv[1] == "upload":
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "gumtree"})
    i = 0
    while True:
        data = body(i)
        try:
            s3.put_object(Bucket=BUCKET, Key=f"obj/{i:06}", Body=data)
        except Exception as e:  # the server was killed: stop here
            print(f"stopped: {type(e).__name__}", flush=True)
            break
        print(f"acked obj/{i:06} {hashlib.md5(data).hexdigest()}", flush=True)
        i += 1
else:
    acked = [line.split()[1:] for line in open(sys.argv[2]) if line.startswith("acked ")]
    assert acked, "nothing was acknowledged"
    for key, md5 in acked:
        got = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert hashlib.md5(got).hexdigest() == md5, f"{key} differs after the crash"
    print(f"verified {len(acked)} acknowledged objects", flush=True)
