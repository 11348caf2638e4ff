"""CloudWatch clients in a chosen protocol. botocore 1.44 speaks
awsJson1_0 to CloudWatch (it ranks json above smithy-rpc-v2-cbor, whatever
the model lists first); SDKs that pick CBOR are served too, so the tests
also make a boto3 client whose model offers only CBOR."""

import gzip
import json
import os
import tempfile

import boto3
import botocore
import botocore.session


def cbor_session():
    """A botocore session whose CloudWatch model offers only CBOR."""
    src = os.path.join(os.path.dirname(botocore.__file__), "data", "cloudwatch", "2010-08-01")
    root = tempfile.mkdtemp()
    dst = os.path.join(root, "cloudwatch", "2010-08-01")
    os.makedirs(dst)
    with gzip.open(os.path.join(src, "service-2.json.gz")) as f:
        model = json.load(f)
    model["metadata"]["protocols"] = ["smithy-rpc-v2-cbor"]
    with open(os.path.join(dst, "service-2.json"), "w") as f:
        json.dump(model, f)
    s = botocore.session.Session()
    s.get_component("data_loader").search_paths.insert(0, root)
    return boto3.Session(botocore_session=s)
