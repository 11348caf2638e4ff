"""What the client scripts share: an expected error's code and status, and
the progress line of a passed check."""

from botocore.exceptions import ClientError


def error_of(fn, **kwargs):
    """The error response (botocore's dict) of a call that must fail."""
    try:
        fn(**kwargs)
    except ClientError as e:
        return e.response
    raise AssertionError(f"{fn.__name__} should have failed")


def code_of(fn, **kwargs):
    """(error code, HTTP status) of a call that must fail."""
    e = error_of(fn, **kwargs)
    return e["Error"]["Code"], e["ResponseMetadata"]["HTTPStatusCode"]


def check(name):
    print(f"ok: {name}", flush=True)
