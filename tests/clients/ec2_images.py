"""The image registry through the EC2 API: boto3 (SigV4) and boto 2.49's
connect_euca (SigV2, /services/Eucalyptus), with images uploaded to Walrus.

Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (owner),
GUMTREE_OTHER_KEY / GUMTREE_OTHER_SECRET / GUMTREE_OTHER_ID (second account),
GUMTREE_EC2_ENDPOINT, GUMTREE_S3_ENDPOINT.
"""

import os
import urllib.parse

import boto
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from checks import check, code_of

EC2 = os.environ["GUMTREE_EC2_ENDPOINT"]
S3 = os.environ["GUMTREE_S3_ENDPOINT"]
cfg = Config(retries={"max_attempts": 1})
ec2 = boto3.client("ec2", endpoint_url=EC2, region_name="gumtree", config=cfg)
s3 = boto3.client("s3", endpoint_url=S3, region_name="gumtree", config=cfg)
other = boto3.client("ec2", endpoint_url=EC2, region_name="gumtree", config=cfg,
                     aws_access_key_id=os.environ["GUMTREE_OTHER_KEY"],
                     aws_secret_access_key=os.environ["GUMTREE_OTHER_SECRET"])
other_id = os.environ["GUMTREE_OTHER_ID"]




s3.create_bucket(Bucket="images", CreateBucketConfiguration={"LocationConstraint": "gumtree"})
s3.put_object(Bucket="images", Key="tiny/vmlinuz", Body=b"K" * 1000, Metadata={"image-type": "kernel"})
s3.put_object(Bucket="images", Key="tiny/initrd", Body=b"R" * 500, Metadata={"image-type": "ramdisk"})
s3.put_object(Bucket="images", Key="tiny/disk.img", Body=b"D" * 2000)
s3.put_object(Bucket="images", Key="tiny/odd", Body=b"?", Metadata={"image-type": "floppy"})

aki = ec2.register_image(ImageLocation="images/tiny/vmlinuz", Name="tiny-kernel")["ImageId"]
ari = ec2.register_image(ImageLocation="images/tiny/initrd", Name="tiny-ramdisk")["ImageId"]
ami = ec2.register_image(ImageLocation="images/tiny/disk.img", Name="tiny", Description="the tiny guest",
                         KernelId=aki, RamdiskId=ari, Architecture="x86_64")["ImageId"]
assert aki.startswith("aki-") and ari.startswith("ari-") and ami.startswith("ami-"), (aki, ari, ami)
mine = {i["ImageId"]: i for i in ec2.describe_images(Owners=["self"])["Images"]}
assert set(mine) == {aki, ari, ami}, mine
img = mine[ami]
assert img["ImageType"] == "machine" and img["KernelId"] == aki and img["RamdiskId"] == ari, img
assert img["ImageLocation"] == "images/tiny/disk.img" and img["State"] == "available", img
assert img["Public"] is False and img["Name"] == "tiny" and img["Description"] == "the tiny guest", img
assert mine[aki]["ImageType"] == "kernel" and mine[ari]["ImageType"] == "ramdisk"
assert img["Hypervisor"] == "kvm", img
assert [i["ImageId"] for i in ec2.describe_images(Filters=[{"Name": "hypervisor", "Values": ["kvm"]}],
                                                   ImageIds=[ami])["Images"]] == [ami]
kernels = ec2.describe_images(Filters=[{"Name": "image-type", "Values": ["kernel"]}])["Images"]
assert [i["ImageId"] for i in kernels] == [aki], kernels
named = ec2.describe_images(Filters=[{"Name": "name", "Values": ["tiny-*"]}])["Images"]
assert sorted(i["ImageId"] for i in named) == sorted([aki, ari]), named
assert [i["ImageId"] for i in ec2.describe_images(ImageIds=[ami])["Images"]] == [ami]
check("RegisterImage of kernel, ramdisk and machine image; DescribeImages by owner, id and filters")

assert code_of(ec2.register_image, ImageLocation="images/tiny/disk.img", Name="tiny") == (
    "InvalidAMIName.Duplicate", 400)
assert code_of(ec2.register_image, ImageLocation="images/missing", Name="nothing") == ("InvalidManifest", 400)
assert code_of(ec2.register_image, ImageLocation="images/tiny/odd", Name="odd") == ("InvalidParameterValue", 400)
assert code_of(ec2.register_image, ImageLocation="images/tiny/disk.img", Name="wrong-kernel", KernelId=ari) == (
    "InvalidAKIID.NotFound", 400)
assert code_of(ec2.register_image, ImageLocation="images/tiny/disk.img", Name="dry", DryRun=True) == (
    "DryRunOperation", 412)
assert code_of(ec2.register_image, Name="no-location") == ("MissingParameter", 400)
assert code_of(ec2.describe_images, ImageIds=["ami-0000000000000000f"]) == ("InvalidAMIID.NotFound", 400)
assert code_of(ec2.describe_images, ImageIds=["not-an-id"]) == ("InvalidAMIID.Malformed", 400)
assert code_of(ec2.describe_images, Filters=[{"Name": "colour", "Values": ["red"]}]) == (
    "InvalidParameterValue", 400)
assert len(ec2.describe_images(Owners=["self"])["Images"]) == 3, "failed calls registered nothing"
check("errors: duplicate name, missing object, bad image-type, wrong kernel, DryRun, bad ids and filters")

# Another account sees nothing of them, cannot register what it cannot read, nor deregister.
assert other.describe_images()["Images"] == []
assert code_of(other.describe_images, ImageIds=[ami]) == ("InvalidAMIID.NotFound", 400)
assert code_of(other.register_image, ImageLocation="images/tiny/disk.img", Name="stolen") == (
    "UnauthorizedOperation", 403)
assert code_of(other.deregister_image, ImageId=ami) == ("InvalidAMIID.NotFound", 400)
# Public: everyone sees and may launch it; the owner can take it back.
ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]})
assert [i["ImageId"] for i in other.describe_images(ExecutableUsers=["all"])["Images"]] == [ami]
perm = ec2.describe_image_attribute(ImageId=ami, Attribute="launchPermission")["LaunchPermissions"]
assert perm == [{"Group": "all"}], perm
assert code_of(other.modify_image_attribute, ImageId=ami,
               LaunchPermission={"Remove": [{"Group": "all"}]}) == ("UnauthorizedOperation", 403)
assert code_of(other.deregister_image, ImageId=ami) == ("UnauthorizedOperation", 403)
ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Remove": [{"Group": "all"}]})
assert other.describe_images()["Images"] == []
# Shared with one account.
ec2.modify_image_attribute(ImageId=aki, Attribute="launchPermission", OperationType="add", UserIds=[other_id])
assert [i["ImageId"] for i in other.describe_images()["Images"]] == [aki]
perm = ec2.describe_image_attribute(ImageId=aki, Attribute="launchPermission")["LaunchPermissions"]
assert perm == [{"UserId": other_id}], perm
assert code_of(ec2.modify_image_attribute, ImageId=aki, LaunchPermission={"Add": [{"UserId": "nope"}]}) == (
    "InvalidAMIAttributeItemValue", 400)
check("accounts: private by default, public and shared launch permissions, owner-only changes")

# boto 2.49 as euca2ools-era scripts use it: SigV2 at /services/Eucalyptus.
u = urllib.parse.urlparse(EC2)
conn = boto.connect_euca(host=u.hostname, port=u.port, is_secure=False, path="/services/Eucalyptus",
                         aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])
images = {i.id: i for i in conn.get_all_images()}
assert set(images) == {aki, ari, ami}, images
assert images[ami].kernel_id == aki and images[ami].type == "machine", vars(images[ami])
zones = conn.get_all_zones()
assert [z.name for z in zones] == ["zone-1"] and zones[0].state == "available", zones
regions = conn.get_all_regions()
assert [r.name for r in regions] == ["gumtree"], regions
bad = boto.connect_euca(host=u.hostname, port=u.port, is_secure=False, path="/services/Eucalyptus",
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"], aws_secret_access_key="wrong")
try:
    bad.get_all_images()
    raise AssertionError("a wrong secret must fail")
except boto.exception.EC2ResponseError as e:
    assert e.error_code == "AuthFailure", e.error_code
check("boto 2 connect_euca (SigV2): images, zones, regions; AuthFailure with a wrong secret")

assert ec2.deregister_image(ImageId=ami)["Return"] is True
assert code_of(ec2.describe_images, ImageIds=[ami]) == ("InvalidAMIID.NotFound", 400)
check("DeregisterImage")
print("ec2 images: all checks passed")
