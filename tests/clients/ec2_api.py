"""Key pairs, tags, quotas and account attributes through the EC2 API with
boto3, checked against ssh-keygen and openssl; the nodes run libvirt's test
driver, so instances start at once (real guests are ec2_instances.py's job).

Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the cloud's admin),
GUMTREE_OTHER_KEY / GUMTREE_OTHER_SECRET (an account with a quota of
3 instances and 4 cores), GUMTREE_EC2_ENDPOINT, GUMTREE_S3_ENDPOINT.
"""

import base64
import datetime
import hashlib
import hmac
import html
import os
import socket
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from checks import check, code_of, error_of

EC2 = os.environ["GUMTREE_EC2_ENDPOINT"]
S3 = os.environ["GUMTREE_S3_ENDPOINT"]
cfg = Config(retries={"max_attempts": 1})
ec2 = boto3.client("ec2", endpoint_url=EC2, region_name="gumtree", config=cfg)
s3 = boto3.client("s3", endpoint_url=S3, region_name="gumtree", config=cfg)
other = boto3.client("ec2", endpoint_url=EC2, region_name="gumtree", config=cfg,
                     aws_access_key_id=os.environ["GUMTREE_OTHER_KEY"],
                     aws_secret_access_key=os.environ["GUMTREE_OTHER_SECRET"])
work = tempfile.mkdtemp(prefix="ec2-api-")




def sh(cmd, data=None):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, input=data).stdout.decode()


def write(name, text, mode=0o600):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def ids_of(reservation_or_list):
    return sorted(i["InstanceId"] for i in reservation_or_list)


def described(client, **kwargs):
    return [i for r in client.describe_instances(**kwargs)["Reservations"] for i in r["Instances"]]


def wait_state(client, ids, want, timeout=60):
    start = time.time()
    while time.time() - start < timeout:
        states = {i["InstanceId"]: i["State"]["Name"] for i in described(client, InstanceIds=ids)}
        if all(s == want for s in states.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"{ids} not {want}: {states}")


# ---- Key pairs -------------------------------------------------------------
rsa = ec2.create_key_pair(KeyName="lab-rsa")
pem = write("lab-rsa.pem", rsa["KeyMaterial"] + "\n")
assert rsa["KeyMaterial"].startswith("-----BEGIN RSA PRIVATE KEY-----"), rsa["KeyMaterial"][:40]
assert rsa["KeyPairId"].startswith("key-"), rsa
# EC2's fingerprint of a key it made: SHA-1 of the private key as DER PKCS#8.
sha1 = sh(f"openssl pkcs8 -topk8 -nocrypt -in {pem} -outform DER | openssl sha1 -c").split("= ")[1].strip()
assert rsa["KeyFingerprint"] == sha1, (rsa["KeyFingerprint"], sha1)
ed = ec2.create_key_pair(KeyName="lab-ed", KeyType="ed25519",
                         TagSpecifications=[{"ResourceType": "key-pair", "Tags": [{"Key": "team", "Value": "a"}]}])
edkey = write("lab-ed", ed["KeyMaterial"] + "\n")
assert ed["KeyMaterial"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
assert ed["Tags"] == [{"Key": "team", "Value": "a"}], ed
# ssh-keygen reads both private keys and derives the public keys we keep.
pairs = {k["KeyName"]: k for k in ec2.describe_key_pairs(IncludePublicKey=True)["KeyPairs"]}
assert set(pairs) == {"lab-rsa", "lab-ed"}, pairs
assert sh(f"ssh-keygen -y -f {pem}").split()[:2] == pairs["lab-rsa"]["PublicKey"].split()[:2]
assert sh(f"ssh-keygen -y -f {edkey}").split()[:2] == pairs["lab-ed"]["PublicKey"].split()[:2]
# ed25519: base64 SHA-256, as ssh-keygen -l prints it (with base64 padding).
sha256 = sh(f"ssh-keygen -l -f {edkey}").split()[1].removeprefix("SHA256:")
assert ed["KeyFingerprint"].rstrip("=") == sha256, (ed["KeyFingerprint"], sha256)
assert pairs["lab-ed"]["KeyType"] == "ed25519" and pairs["lab-rsa"]["KeyType"] == "rsa"
assert pairs["lab-ed"]["Tags"] == [{"Key": "team", "Value": "a"}]
# Import: MD5 of the DER public key for RSA.
sh(f"ssh-keygen -q -t rsa -b 2048 -N '' -C imported -f {work}/imp")
pub = open(f"{work}/imp.pub").read()
imp = ec2.import_key_pair(KeyName="imported", PublicKeyMaterial=pub.encode())
md5 = sh(f"ssh-keygen -e -m pkcs8 -f {work}/imp.pub | openssl pkey -pubin -outform DER | openssl md5 -c"
         ).split("= ")[1].strip()
assert imp["KeyFingerprint"] == md5, (imp["KeyFingerprint"], md5)
sh(f"ssh-keygen -q -t ed25519 -N '' -f {work}/imp2")
imp2 = ec2.import_key_pair(KeyName="imported-ed", PublicKeyMaterial=open(f"{work}/imp2.pub", "rb").read())
assert imp2["KeyFingerprint"].rstrip("=") == sh(f"ssh-keygen -l -f {work}/imp2.pub").split()[1][7:]
assert code_of(ec2.create_key_pair, KeyName="lab-rsa") == ("InvalidKeyPair.Duplicate", 400)
assert code_of(ec2.import_key_pair, KeyName="imported", PublicKeyMaterial=pub.encode()) == (
    "InvalidKeyPair.Duplicate", 400)
assert code_of(ec2.import_key_pair, KeyName="junk", PublicKeyMaterial=b"ssh-rsa not-a-key") == (
    "InvalidKey.Format", 400)
assert code_of(ec2.describe_key_pairs, KeyNames=["nope"]) == ("InvalidKeyPair.NotFound", 400)
assert code_of(ec2.create_key_pair, KeyName="dry", DryRun=True) == ("DryRunOperation", 412)
assert code_of(ec2.create_key_pair, KeyName="bad-type", KeyType="dsa")[0] == "InvalidParameterValue"
by_filter = ec2.describe_key_pairs(Filters=[{"Name": "key-type", "Values": ["ed25519"]}])["KeyPairs"]
assert sorted(k["KeyName"] for k in by_filter) == ["imported-ed", "lab-ed"], by_filter
assert ec2.describe_key_pairs(Filters=[{"Name": "tag:team", "Values": ["a"]}])["KeyPairs"][0]["KeyName"] == "lab-ed"
# Another account has its own namespace: it sees none of these and may reuse a name.
assert other.describe_key_pairs()["KeyPairs"] == []
assert code_of(other.describe_key_pairs, KeyNames=["lab-rsa"]) == ("InvalidKeyPair.NotFound", 400)
other.create_key_pair(KeyName="lab-rsa", KeyType="ed25519")
assert ec2.describe_key_pairs(KeyNames=["lab-rsa"])["KeyPairs"][0]["KeyType"] == "rsa"
ec2.delete_key_pair(KeyName="imported-ed")
ec2.delete_key_pair(KeyName="imported-ed")  # EC2: deleting a missing name succeeds
assert "imported-ed" not in [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
check("key pairs: RSA and ed25519 made and imported, fingerprints as openssl and ssh-keygen compute them, "
      "duplicates, filters, tags, per-account names, delete")

# ---- An image to run (the nodes' test driver boots nothing) ---------------
s3.create_bucket(Bucket="img", CreateBucketConfiguration={"LocationConstraint": "gumtree"})
s3.put_object(Bucket="img", Key="k", Body=os.urandom(4096), Metadata={"image-type": "kernel"})
s3.put_object(Bucket="img", Key="r", Body=os.urandom(4096), Metadata={"image-type": "ramdisk"})
s3.put_object(Bucket="img", Key="d", Body=os.urandom(65536))
aki = ec2.register_image(ImageLocation="img/k", Name="api-kernel")["ImageId"]
ari = ec2.register_image(ImageLocation="img/r", Name="api-ramdisk")["ImageId"]
ami = ec2.register_image(ImageLocation="img/d", Name="api-disk", KernelId=aki, RamdiskId=ari)["ImageId"]
ec2.modify_image_attribute(ImageId=ami, LaunchPermission={"Add": [{"Group": "all"}]})
for i in (aki, ari):
    ec2.modify_image_attribute(ImageId=i, LaunchPermission={"Add": [{"Group": "all"}]})

# ---- Tags --------------------------------------------------------------------
assert code_of(ec2.run_instances, ImageId=ami, MinCount=1, MaxCount=1, KeyName="missing") == (
    "InvalidKeyPair.NotFound", 400)
r = ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2, KeyName="lab-ed",
                      TagSpecifications=[{"ResourceType": "instance",
                                          "Tags": [{"Key": "Name", "Value": "web"}, {"Key": "env", "Value": "lab"}]}])
web = ids_of(r["Instances"])
assert all(sorted((t["Key"], t["Value"]) for t in i["Tags"]) == [("Name", "web"), ("env", "lab")]
           for i in r["Instances"]), r["Instances"]
db = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
ec2.create_tags(Resources=[db], Tags=[{"Key": "Name", "Value": "db"}, {"Key": "empty", "Value": ""}])
ec2.create_tags(Resources=[ami], Tags=[{"Key": "os", "Value": "tiny"}])
assert ids_of(described(ec2, Filters=[{"Name": "tag:Name", "Values": ["web"]}])) == web
assert ids_of(described(ec2, Filters=[{"Name": "tag:Name", "Values": ["w*", "db"]}])) == sorted(web + [db])
assert ids_of(described(ec2, Filters=[{"Name": "tag-key", "Values": ["empty"]}])) == [db]
assert ids_of(described(ec2, Filters=[{"Name": "key-name", "Values": ["lab-ed"]}])) == web
assert ec2.describe_images(Filters=[{"Name": "tag:os", "Values": ["tiny"]}])["Images"][0]["ImageId"] == ami
tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [db]}])["Tags"]
assert [(t["Key"], t["Value"], t["ResourceType"]) for t in tags] == [
    ("Name", "db", "instance"), ("empty", "", "instance")], tags
ec2.delete_tags(Resources=[db], Tags=[{"Key": "Name", "Value": "other"}])  # value differs: kept
ec2.delete_tags(Resources=[db], Tags=[{"Key": "empty"}])
assert [t["Key"] for t in ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [db]}])["Tags"]] == ["Name"]
assert code_of(ec2.create_tags, Resources=[db], Tags=[{"Key": "aws:x", "Value": "y"}])[0] == "InvalidParameterValue"
assert code_of(ec2.create_tags, Resources=[db], Tags=[{"Key": f"k{n}", "Value": ""} for n in range(50)]) == (
    "TagLimitExceeded", 400)
assert code_of(ec2.create_tags, Resources=[db], Tags=[{"Key": "x", "Value": "y"}], DryRun=True) == (
    "DryRunOperation", 412)
# Another account can see the public image but neither sees nor tags the instances.
assert code_of(other.create_tags, Resources=[db], Tags=[{"Key": "x", "Value": "y"}]) == (
    "InvalidInstanceID.NotFound", 400)
assert other.describe_tags()["Tags"] == []
other.create_tags(Resources=[ami], Tags=[{"Key": "os", "Value": "mine"}])
assert [t["Value"] for t in ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [ami]}])["Tags"]] == ["tiny"]
# Private addresses from the cluster's subnet (172.31.0.0/20 by default), lowest free first.
running = described(ec2, InstanceIds=web + [db])
ips = {i["InstanceId"]: i["PrivateIpAddress"] for i in running}
assert sorted(ips.values()) == ["172.31.0.2", "172.31.0.3", "172.31.0.4"], ips
assert all(i["PrivateDnsName"] == "ip-" + i["PrivateIpAddress"].replace(".", "-") + ".gumtree.compute.internal"
           for i in running), running
assert ids_of(described(ec2, Filters=[{"Name": "private-ip-address", "Values": [ips[db]]}])) == [db]
check("tags: TagSpecifications on RunInstances and key pairs, Create/Delete/DescribeTags, tag:KEY, tag-key, "
      "key-name filters, limits, per-account tags")

# ---- Security groups (the API; enforcement on nodes comes with networking) ---
groups = ec2.describe_security_groups()["SecurityGroups"]
assert [g["GroupName"] for g in groups] == ["default"], groups
default = groups[0]
assert default["IpPermissions"] == [{"IpProtocol": "-1", "IpRanges": [], "Ipv6Ranges": [], "PrefixListIds": [],
                                     "UserIdGroupPairs": [{"GroupId": default["GroupId"], "GroupName": "default",
                                                           "UserId": default["OwnerId"]}]}], default
assert default["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}], default
assert all(i["SecurityGroups"] == [{"GroupName": "default", "GroupId": default["GroupId"]}]
           for i in described(ec2, InstanceIds=web)), "instances without groups are in default"
web_sg = ec2.create_security_group(GroupName="web", Description="web servers")["GroupId"]
assert web_sg.startswith("sg-")
assert code_of(ec2.create_security_group, GroupName="web", Description="again") == ("InvalidGroup.Duplicate", 400)
assert code_of(ec2.create_security_group, GroupName="dry", Description="x", DryRun=True) == ("DryRunOperation", 412)
ec2.authorize_security_group_ingress(GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": default["GroupId"]}]}])
# The older flat form, as euca2ools and boto 2 send it.
ec2.authorize_security_group_ingress(GroupName="web", IpProtocol="tcp", FromPort=443, ToPort=443,
                                     CidrIp="10.0.0.0/8")
assert code_of(ec2.authorize_security_group_ingress, GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]) == (
    "InvalidPermission.Duplicate", 400)
assert code_of(ec2.authorize_security_group_ingress, GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 90, "ToPort": 70000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])[0] == \
    "InvalidParameterValue"
assert code_of(ec2.authorize_security_group_ingress, GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 90, "ToPort": 90, "IpRanges": [{"CidrIp": "10.0.0.300/8"}]}])[0] == \
    "InvalidParameterValue"
assert code_of(ec2.authorize_security_group_ingress, GroupId="sg-00000000000000000", IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 90, "ToPort": 90, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]) == (
    "InvalidGroup.NotFound", 400)
g = ec2.describe_security_groups(GroupIds=[web_sg])["SecurityGroups"][0]
perms = {(p["IpProtocol"], p["FromPort"]): p for p in g["IpPermissions"]}
assert set(perms) == {("tcp", 80), ("tcp", 22), ("tcp", 443)}, perms
assert perms[("tcp", 22)]["UserIdGroupPairs"][0]["GroupName"] == "default"
assert perms[("tcp", 443)]["IpRanges"] == [{"CidrIp": "10.0.0.0/8"}]
# A CIDR with host bits is stored as its network, as EC2 does.
ec2.authorize_security_group_ingress(GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "IpRanges": [{"CidrIp": "192.168.7.9/16"}]}])
g = ec2.describe_security_groups(GroupIds=[web_sg])["SecurityGroups"][0]
assert [p["IpRanges"] for p in g["IpPermissions"] if p.get("FromPort") == 8080] == [
    [{"CidrIp": "192.168.0.0/16"}]], g
assert code_of(ec2.authorize_security_group_ingress, GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "IpRanges": [{"CidrIp": "192.168.0.0/16"}]}]) == (
    "InvalidPermission.Duplicate", 400)
ec2.revoke_security_group_ingress(GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "IpRanges": [{"CidrIp": "192.168.3.3/16"}]}])
by_port = ec2.describe_security_groups(Filters=[{"Name": "ip-permission.from-port", "Values": ["443"]}])
assert [x["GroupName"] for x in by_port["SecurityGroups"]] == ["web"], by_port
ec2.revoke_security_group_ingress(GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
assert code_of(ec2.revoke_security_group_ingress, GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]) == (
    "InvalidPermission.NotFound", 400)
ec2.revoke_security_group_egress(GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
ec2.authorize_security_group_egress(GroupId=web_sg, IpPermissions=[
    {"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])
g = ec2.describe_security_groups(GroupNames=["web"])["SecurityGroups"][0]
assert [(p["IpProtocol"], p.get("FromPort")) for p in g["IpPermissionsEgress"]] == [("udp", 53)], g
assert code_of(ec2.run_instances, ImageId=ami, MinCount=1, MaxCount=1, SecurityGroups=["nope"]) == (
    "InvalidGroup.NotFound", 400)
in_web = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, SecurityGroupIds=[web_sg])
assert in_web["Groups"] == [{"GroupName": "web", "GroupId": web_sg}], in_web["Groups"]
in_web = in_web["Instances"][0]["InstanceId"]
assert ids_of(described(ec2, Filters=[{"Name": "instance.group-name", "Values": ["web"]}])) == [in_web]
assert code_of(ec2.delete_security_group, GroupId=web_sg) == ("DependencyViolation", 400)
assert code_of(ec2.delete_security_group, GroupName="default") == ("CannotDelete", 400)
# Another account has its own default group and cannot see or use ours.
assert [x["GroupName"] for x in other.describe_security_groups()["SecurityGroups"]] == ["default"]
assert code_of(other.describe_security_groups, GroupIds=[web_sg]) == ("InvalidGroup.NotFound", 400)
assert code_of(other.run_instances, ImageId=ami, MinCount=1, MaxCount=1, SecurityGroupIds=[web_sg]) == (
    "InvalidGroup.NotFound", 400)
# Nor name it in a rule: groups are not shared between accounts.
other_default = other.describe_security_groups()["SecurityGroups"][0]["GroupId"]
assert code_of(other.authorize_security_group_ingress, GroupId=other_default, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
     "UserIdGroupPairs": [{"GroupId": web_sg, "UserId": default["OwnerId"]}]}]) == ("InvalidGroup.NotFound", 400)
assert code_of(other.authorize_security_group_ingress, GroupName="default", SourceSecurityGroupName="web",
               SourceSecurityGroupOwnerId=default["OwnerId"]) == ("InvalidGroup.NotFound", 400)
assert code_of(other.authorize_security_group_ingress, GroupId=other_default, IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": web_sg}]}]) == (
    "InvalidGroup.NotFound", 400)
ec2.create_tags(Resources=[web_sg], Tags=[{"Key": "tier", "Value": "front"}])
assert ec2.describe_security_groups(Filters=[{"Name": "tag:tier", "Values": ["front"]}])["SecurityGroups"][0][
    "GroupId"] == web_sg
ec2.terminate_instances(InstanceIds=[in_web])
wait_state(ec2, [in_web], "terminated")
ec2.delete_security_group(GroupId=web_sg)
assert code_of(ec2.describe_security_groups, GroupNames=["web"]) == ("InvalidGroup.NotFound", 400)
check("security groups: default group, create, authorize/revoke ingress and egress (structured and flat), "
      "duplicates, filters, RunInstances by id, groupSet, DependencyViolation, per-account groups, "
      "no cross-account references, tags, delete")

# ---- Elastic IPs (the harness's pool: 203.0.113.10 to 203.0.113.12) -------------
a1 = ec2.allocate_address()
assert a1["PublicIp"] == "203.0.113.10" and a1["AllocationId"].startswith("eipalloc-"), a1
assert ec2.allocate_address(Domain="vpc")["PublicIp"] == "203.0.113.11"
assert other.allocate_address()["PublicIp"] == "203.0.113.12"
assert code_of(other.allocate_address) == ("AddressLimitExceeded", 400)
assoc = ec2.associate_address(InstanceId=db, PublicIp="203.0.113.10")["AssociationId"]
assert assoc.startswith("eipassoc-"), assoc
assert described(ec2, InstanceIds=[db])[0]["PublicIpAddress"] == "203.0.113.10"
addrs = {a["PublicIp"]: a for a in ec2.describe_addresses()["Addresses"]}
assert set(addrs) == {"203.0.113.10", "203.0.113.11"}, addrs
assert addrs["203.0.113.10"]["InstanceId"] == db and addrs["203.0.113.10"]["AssociationId"] == assoc
assert addrs["203.0.113.10"]["PrivateIpAddress"] == ips[db], addrs
assert "InstanceId" not in addrs["203.0.113.11"]
# Re-association moves the address.
ec2.associate_address(InstanceId=web[0], AllocationId=a1["AllocationId"])
assert "PublicIpAddress" not in described(ec2, InstanceIds=[db])[0]
assert ids_of(described(ec2, Filters=[{"Name": "ip-address", "Values": ["203.0.113.10"]}])) == [web[0]]
# Other accounts cannot touch ours.
assert code_of(other.associate_address, InstanceId=db, PublicIp="203.0.113.12") == ("InvalidInstanceID.NotFound", 400)
assert code_of(other.describe_addresses, PublicIps=["203.0.113.10"]) == ("InvalidAddress.NotFound", 400)
assert code_of(other.release_address, PublicIp="203.0.113.10") == ("InvalidAddress.NotFound", 400)
# Terminating an instance disassociates its address; the address stays allocated.
tmp = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
ec2.associate_address(InstanceId=tmp, PublicIp="203.0.113.11")
ec2.terminate_instances(InstanceIds=[tmp])
wait_state(ec2, [tmp], "terminated")  # and its private address is free again
assert "InstanceId" not in ec2.describe_addresses(PublicIps=["203.0.113.11"])["Addresses"][0]
ec2.disassociate_address(PublicIp="203.0.113.10")
assert "PublicIpAddress" not in described(ec2, InstanceIds=[web[0]])[0]
ec2.release_address(AllocationId=a1["AllocationId"])
ec2.release_address(PublicIp="203.0.113.11")
assert ec2.describe_addresses()["Addresses"] == []
assert other.allocate_address()["PublicIp"] == "203.0.113.10", "released addresses go back to the pool"
check("elastic IPs: allocate from the pool, associate, re-associate, describe with filters, isolation, "
      "terminate disassociates, disassociate, release")

# ---- Quotas (set by the admin: 3 instances, 4 cores) --------------------------
attrs = {a["AttributeName"]: [v["AttributeValue"] for v in a["AttributeValues"]]
         for a in other.describe_account_attributes()["AccountAttributes"]}
assert attrs["supported-platforms"] == ["EC2"] and attrs["max-instances"] == ["3"], attrs
mine = {a["AttributeName"]: a["AttributeValues"][0]["AttributeValue"]
        for a in ec2.describe_account_attributes(AttributeNames=["max-instances"])["AccountAttributes"]}
assert mine == {"max-instances": "12"}, mine  # no quota: what 3 nodes of 4 cores hold of m1.small
two = other.run_instances(ImageId=ami, InstanceType="c1.medium", MinCount=1, MaxCount=5)["Instances"]
assert len(two) == 2, "4 cores of quota hold two 2-core instances"
assert code_of(other.run_instances, ImageId=ami, MinCount=1, MaxCount=1) == ("VcpuLimitExceeded", 400)
other.terminate_instances(InstanceIds=[two[0]["InstanceId"]])
wait_state(other, [two[0]["InstanceId"]], "terminated")
ones = other.run_instances(ImageId=ami, MinCount=1, MaxCount=3)["Instances"]
assert len(ones) == 2, "3 instances of quota, one is running: two more"
# The terminated instance's address is free again; the one still in use is not handed out.
assert two[0]["PrivateIpAddress"] == "172.31.0.5" and two[1]["PrivateIpAddress"] == "172.31.0.6", two
assert sorted(i["PrivateIpAddress"] for i in ones) == ["172.31.0.5", "172.31.0.7"], ones
assert code_of(other.run_instances, ImageId=ami, MinCount=1, MaxCount=1) == ("InstanceLimitExceeded", 400)
assert len([i for i in described(other) if i["State"]["Name"] != "terminated"]) == 3
check("quotas: MaxCount cut to what the quota allows, VcpuLimitExceeded, InstanceLimitExceeded, "
      "terminated instances free their share (and their private address); DescribeAccountAttributes")

# ---- Eucalyptus' verbose zone listing, for the admin only ---------------------
def verbose_zones():
    v = ec2.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
    return {z["ZoneName"]: z["State"] for z in v}


lines = verbose_zones()
assert "zone-1" in lines and "|- m1.small" in lines and "|- vm types" in lines, lines
free, _, most = lines["|- m1.small"].split()[:3]
assert int(most) == 12, lines  # 3 nodes x 4 cores
# Free room comes from the nodes' reports, which follow the launches within a second or so.
start = time.time()
while int(free) >= int(most):
    assert time.time() - start < 20, f"running instances take room: {lines}"
    time.sleep(0.5)
    lines = verbose_zones()
    free = lines["|- m1.small"].split()[0]
plain = other.describe_availability_zones(ZoneNames=["verbose"])["AvailabilityZones"]
assert [z["ZoneName"] for z in plain] == ["zone-1"], plain
check("DescribeAvailabilityZones verbose: free/max per type for the admin, plain zones for others")

all_ids = [i["InstanceId"] for c in (ec2, other) for i in described(c) if i["State"]["Name"] != "terminated"]
ec2.terminate_instances(InstanceIds=[i for i in all_ids if i in web + [db]])
other.terminate_instances(InstanceIds=[i for i in all_ids if i not in web + [db]])
# ---- Accounts and access keys over the API (Eucalyptus' Euare, IAM's format) --
EUARE = EC2.rstrip("/") + "/services/Euare"
admin_creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])


def euare(creds, action, **params):
    """A signed IAM-style Query call: (HTTP status, body)."""
    body = urllib.parse.urlencode({"Action": action, "Version": "2010-05-08", **params})
    req = AWSRequest(method="POST", url=EUARE, data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    SigV4Auth(creds, "iam", "us-east-1").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(p.url, data=body.encode(), headers=dict(p.headers), method="POST")
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def tag(xml, name):
    return re.findall(f"<{name}>([^<]*)</{name}>", xml)


status, body = euare(admin_creds, "CreateAccount", AccountName="euare-lab")
assert status == 200 and tag(body, "AccountName") == ["euare-lab"], body
assert len(tag(body, "AccountId")[0]) == 12, body
status, body = euare(admin_creds, "CreateAccount", AccountName="euare-lab")
assert status == 409 and tag(body, "Code") == ["EntityAlreadyExists"] and "<ErrorResponse" in body, body
status, body = euare(admin_creds, "CreateAccount", AccountName="Bad_Name")
assert status == 400 and tag(body, "Code") == ["ValidationError"], body
status, body = euare(admin_creds, "ListAccounts")
assert status == 200 and "euare-lab" in tag(body, "AccountName"), body
status, body = euare(admin_creds, "CreateAccessKey", DelegateAccount="euare-lab", UserName="alice")
assert status == 200 and tag(body, "UserName") == ["alice"] and tag(body, "Status") == ["Active"], body
alice = Credentials(tag(body, "AccessKeyId")[0], tag(body, "SecretAccessKey")[0])
alice_ec2 = boto3.client("ec2", endpoint_url=EC2, region_name="gumtree", config=cfg,
                         aws_access_key_id=alice.access_key, aws_secret_access_key=alice.secret_key)
assert described(alice_ec2) == [], "a new account starts empty"
# The account's own user manages its keys with boto3's IAM client.
alice_iam = boto3.client("iam", endpoint_url=EUARE, region_name="gumtree", config=cfg,
                         aws_access_key_id=alice.access_key, aws_secret_access_key=alice.secret_key)
bob = alice_iam.create_access_key(UserName="bob")["AccessKey"]
assert bob["UserName"] == "bob" and bob["Status"] == "Active" and bob["SecretAccessKey"], bob
listed = alice_iam.list_access_keys()["AccessKeyMetadata"]
assert sorted(k["UserName"] for k in listed) == ["alice", "bob"], listed
alice_iam.delete_access_key(AccessKeyId=bob["AccessKeyId"])
assert [k["UserName"] for k in alice_iam.list_access_keys()["AccessKeyMetadata"]] == ["alice"]
try:
    alice_iam.delete_access_key(AccessKeyId=bob["AccessKeyId"])
    raise AssertionError("deleting a deleted key must fail")
except ClientError as e:
    assert e.response["Error"]["Code"] == "NoSuchEntity", e.response
# Console passwords, as IAM's login profiles (stored as Argon2id hashes).
made = alice_iam.create_login_profile(UserName="alice", Password="a long password")["LoginProfile"]
assert made["UserName"] == "alice" and made["PasswordResetRequired"] is False, made
assert alice_iam.get_login_profile(UserName="alice")["LoginProfile"]["UserName"] == "alice"
for call, kwargs, code in [
    (alice_iam.create_login_profile, {"UserName": "alice", "Password": "another password"}, "EntityAlreadyExists"),
    (alice_iam.create_login_profile, {"UserName": "carol", "Password": "short"}, "PasswordPolicyViolation"),
    (alice_iam.update_login_profile, {"UserName": "carol", "Password": "long enough"}, "NoSuchEntity"),
    (alice_iam.get_login_profile, {"UserName": "carol"}, "NoSuchEntity"),
]:
    try:
        call(**kwargs)
        raise AssertionError(f"{call.__name__} {kwargs} must fail")
    except ClientError as e:
        assert e.response["Error"]["Code"] == code, (kwargs, e.response)
alice_iam.update_login_profile(UserName="alice", Password="changed password")
alice_iam.delete_login_profile(UserName="alice")
try:
    alice_iam.get_login_profile(UserName="alice")
    raise AssertionError("a deleted login profile must be gone")
except ClientError as e:
    assert e.response["Error"]["Code"] == "NoSuchEntity", e.response
status, body = euare(alice, "ListAccounts")
assert status == 403 and tag(body, "Code") == ["AccessDenied"], body
status, body = euare(alice, "CreateAccessKey", DelegateAccount="eucalyptus")
assert status == 403 and tag(body, "Code") == ["AccessDenied"], body
wrong = boto3.client("iam", endpoint_url=EUARE, region_name="gumtree", config=cfg,
                     aws_access_key_id=alice.access_key, aws_secret_access_key="wrong")
try:
    wrong.list_access_keys()
    raise AssertionError("a wrong secret must fail")
except ClientError as e:
    assert e.response["Error"]["Code"] == "AuthFailure", e.response
# An account with instances cannot be deleted; once they are gone it can, and its keys stop working.
lab_iid = alice_ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
status, body = euare(admin_creds, "DeleteAccount", AccountName="euare-lab")
assert status == 409 and tag(body, "Code") == ["DeleteConflict"], body
assert lab_iid in tag(body, "Message")[0], body
alice_ec2.terminate_instances(InstanceIds=[lab_iid])
wait_state(alice_ec2, [lab_iid], "terminated")
status, body = euare(admin_creds, "DeleteAccount", AccountName="euare-lab")
assert status == 200, body
assert code_of(alice_ec2.describe_instances) == ("AuthFailure", 401)
check("Euare API: CreateAccount/ListAccounts/DeleteAccount by the admin, access keys for an account's users "
      "and login profiles (boto3's IAM client), AccessDenied for others, DeleteConflict while instances live")
# ---- EC2 exactness found with botocore clients ----
# An id of the wrong shape is Malformed, not NotFound.
assert code_of(ec2.describe_instances, InstanceIds=["i-xyz"]) == ("InvalidInstanceID.Malformed", 400)
assert code_of(ec2.describe_images, ImageIds=["ami-nothex00"]) == ("InvalidAMIID.Malformed", 400)
assert code_of(ec2.delete_security_group, GroupId="sg-12") == ("InvalidGroupId.Malformed", 400)
assert code_of(ec2.delete_security_group, GroupId="sg-00000000000000000") == ("InvalidGroup.NotFound", 400)
check("malformed ids: InvalidInstanceID.Malformed, InvalidAMIID.Malformed, InvalidGroupId.Malformed")
# Termination protection: set at launch or by ModifyInstanceAttribute, in
# any state; TerminateInstances refuses it and terminates nothing.
guarded = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, DisableApiTermination=True)["Instances"][0]["InstanceId"]
plain = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
wait_state(ec2, [guarded, plain], "running")
attr = ec2.describe_instance_attribute(InstanceId=guarded, Attribute="disableApiTermination")
assert attr["DisableApiTermination"]["Value"] is True, attr
assert code_of(ec2.terminate_instances, InstanceIds=[plain, guarded]) == ("OperationNotPermitted", 400)
assert [i["State"]["Name"] for i in described(ec2, InstanceIds=[plain])] == ["running"], "nothing was terminated"
ec2.modify_instance_attribute(InstanceId=plain, DisableApiTermination={"Value": True})
assert code_of(ec2.terminate_instances, InstanceIds=[plain]) == ("OperationNotPermitted", 400)
ec2.modify_instance_attribute(InstanceId=plain, Attribute="disableApiTermination", Value="false")
ec2.modify_instance_attribute(InstanceId=guarded, DisableApiTermination={"Value": False})
assert ec2.describe_instance_attribute(InstanceId=guarded, Attribute="disableApiTermination")[
    "DisableApiTermination"]["Value"] is False
# GetPasswordData: empty for Linux images, for the caller's own instances only.
pw = ec2.get_password_data(InstanceId=guarded)
assert pw["InstanceId"] == guarded and pw["PasswordData"] == "", pw
assert code_of(other.get_password_data, InstanceId=guarded) == ("InvalidInstanceID.NotFound", 400)
ec2.terminate_instances(InstanceIds=[plain, guarded])
wait_state(ec2, [plain, guarded], "terminated")
check("DisableApiTermination (RunInstances, Modify/DescribeInstanceAttribute, OperationNotPermitted), GetPasswordData")
# Revoke takes every form Authorize takes: a group pair by id and an ICMP
# rule, granted in one call, are revoked in one call.
target = ec2.create_security_group(GroupName="revoke-target", Description="t")["GroupId"]
peer = ec2.create_security_group(GroupName="revoke-peer", Description="p")["GroupId"]
both = [
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "UserIdGroupPairs": [{"GroupId": peer}]},
    {"IpProtocol": "icmp", "FromPort": -1, "ToPort": -1, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
]
ec2.authorize_security_group_ingress(GroupId=target, IpPermissions=both)
assert len(ec2.describe_security_groups(GroupIds=[target])["SecurityGroups"][0]["IpPermissions"]) == 2
ec2.revoke_security_group_ingress(GroupId=target, IpPermissions=both)
left = ec2.describe_security_groups(GroupIds=[target])["SecurityGroups"][0]["IpPermissions"]
assert left == [], left
ec2.delete_security_group(GroupId=target)
ec2.delete_security_group(GroupId=peer)
check("RevokeSecurityGroupIngress takes what Authorize took in one call (group pair by id, ICMP)")

# ---- Exactness of authentication: signatures scoped elsewhere, a SigV2
# request good for years, oversized requests: AWS's errors, with XML bodies.
def raw_request(url, method, headers, body=b""):
    """(status, body) of a request sent as given."""
    req = urllib.request.Request(url, data=body if method != "GET" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


eu = boto3.client("ec2", endpoint_url=EC2, region_name="eu-west-1", config=cfg)
e = error_of(eu.describe_regions)
assert (e["Error"]["Code"], e["ResponseMetadata"]["HTTPStatusCode"]) == ("SignatureDoesNotMatch", 403), e
assert "scoped to a valid region, not 'eu-west-1'" in e["Error"]["Message"], e
body = "Action=DescribeRegions&Version=2016-11-15"
req = AWSRequest(method="POST", url=EC2, data=body,
                 headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
SigV4Auth(admin_creds, "s3", "gumtree").add_auth(req)
status, text = raw_request(EC2, "POST", dict(req.prepare().headers), body.encode())
assert status == 403 and tag(text, "Code") == ["SignatureDoesNotMatch"], text
assert "correct service: 'ec2'" in html.unescape(tag(text, "Message")[0]), text
s3_eu = boto3.client("s3", endpoint_url=S3, region_name="eu-west-1", config=cfg)
e = error_of(s3_eu.list_buckets)
assert e["Error"]["Code"] == "AuthorizationHeaderMalformed" and e["Error"].get("Region") == "gumtree", e
# S3 also takes us-east-1, as AWS does for its global endpoint.
boto3.client("s3", endpoint_url=S3, region_name="us-east-1", config=cfg).list_buckets()
check("SigV4 scopes: another region or service refused (SignatureDoesNotMatch, AuthorizationHeaderMalformed)")


def sigv2(params, expires):
    """A SigV2 POST to the EC2 endpoint that stays valid until `expires`."""
    u = urllib.parse.urlparse(EC2)
    p = dict(params, AWSAccessKeyId=admin_creds.access_key, SignatureVersion="2",
             SignatureMethod="HmacSHA256", Version="2016-11-15",
             Expires=expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
    q = lambda v: urllib.parse.quote(str(v), safe="-_.~")
    query = "&".join(f"{q(k)}={q(v)}" for k, v in sorted(p.items()))
    to_sign = f"POST\n{u.netloc.lower()}\n{u.path or '/'}\n{query}"
    sig = base64.b64encode(hmac.new(admin_creds.secret_key.encode(), to_sign.encode(), hashlib.sha256).digest())
    return raw_request(EC2, "POST", {"Content-Type": "application/x-www-form-urlencoded"},
                       (query + "&Signature=" + q(sig.decode())).encode())


now = datetime.datetime.now(datetime.timezone.utc)
status, text = sigv2({"Action": "DescribeRegions"}, now + datetime.timedelta(hours=1))
assert status == 200 and "gumtree" in text, text
status, text = sigv2({"Action": "DescribeRegions"}, now + datetime.timedelta(days=365))
assert status == 400 and tag(text, "Code") == ["InvalidParameterValue"], text
assert "at most 7 days ahead" in tag(text, "Message")[0], text
check("SigV2 Expires: an hour ahead works, a year ahead is refused")

pad = {f"X-Pad-{i}": "x" * 10 for i in range(300)}
for url in (EC2, S3):
    status, text = raw_request(url, "GET", pad)
    assert status == 431 and tag(text, "Code") == ["RequestHeaderSectionTooLarge"], (url, status, text)
# One PUT holds at most 5 GiB: refused from its Content-Length, before any byte.
s3.create_bucket(Bucket="exactness", CreateBucketConfiguration={"LocationConstraint": "gumtree"})
url = s3.generate_presigned_url("put_object", Params={"Bucket": "exactness", "Key": "huge"}, ExpiresIn=300)
u = urllib.parse.urlparse(url)
with socket.create_connection((u.hostname, u.port)) as sock:
    sock.sendall(f"PUT {u.path}?{u.query} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                 f"Content-Length: {6 * 1024 ** 3}\r\n\r\n".encode())
    sock.settimeout(10)
    answer = b""
    while b"</Error>" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
answer = answer.decode(errors="replace")
assert answer.startswith("HTTP/1.1 400"), answer
assert "<Code>EntityTooLarge</Code>" in answer and "<MaxSizeAllowed>5368709120</MaxSizeAllowed>" in answer, answer
assert code_of(s3.head_object, Bucket="exactness", Key="huge")[1] == 404
s3.delete_bucket(Bucket="exactness")
check("oversized requests: 431 RequestHeaderSectionTooLarge (EC2 and S3), 400 EntityTooLarge over 5 GiB, with XML")
print("ec2 api: all checks passed")
