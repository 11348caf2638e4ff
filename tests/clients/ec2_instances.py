"""Instances through the EC2 API with boto3: the tiny guest registered from
Walrus, run, waited for, its console read, stopped, started, rebooted,
terminated; MaxCount, capacity and account isolation.

Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (owner),
GUMTREE_OTHER_KEY / GUMTREE_OTHER_SECRET (second account),
GUMTREE_EC2_ENDPOINT, GUMTREE_S3_ENDPOINT, GUMTREE_TINY_GUEST (directory).
"""

import base64
import os
import subprocess
import sys
import time
import urllib.parse

import boto
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

from checks import check, code_of

EC2 = os.environ["GUMTREE_EC2_ENDPOINT"]
S3 = os.environ["GUMTREE_S3_ENDPOINT"]
TINY = os.environ["GUMTREE_TINY_GUEST"]
cfg = Config(retries={"max_attempts": 1})
ec2 = boto3.client("ec2", endpoint_url=EC2, region_name="gumtree", config=cfg)
s3 = boto3.client("s3", endpoint_url=S3, region_name="gumtree", config=cfg)
other = boto3.client("ec2", endpoint_url=EC2, region_name="gumtree", config=cfg,
                     aws_access_key_id=os.environ["GUMTREE_OTHER_KEY"],
                     aws_secret_access_key=os.environ["GUMTREE_OTHER_SECRET"])
MARKER = "GUMTREE-BOOT-OK"




def console(iid):
    out = ec2.get_console_output(InstanceId=iid).get("Output", "")
    return out


def wait_console(iid, count=1, timeout=180):
    start = time.time()
    while time.time() - start < timeout:
        text = console(iid)
        if text.count(MARKER) >= count:
            return time.time() - start
        time.sleep(1)
    raise AssertionError(f"{iid}: {count} boot marker(s) not seen in {timeout}s:\n{console(iid)}")


def state(iid):
    r = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return r["State"]["Name"]


def waiter(name, ids):
    ec2.get_waiter(name).wait(InstanceIds=ids, WaiterConfig={"Delay": 2, "MaxAttempts": 90})


FETCH_CODE = ("import sys, urllib.request\n"
              "try:\n"
              "    print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode().strip())\n"
              "except Exception as e:\n"
              "    print('FAILED', e)\n")


def fetch(ns, url, timeout=1.5):
    """GET url from network namespace ns: the body, or 'FAILED <why>'."""
    got = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", FETCH_CODE, url, str(timeout)],
                         capture_output=True, text=True, timeout=timeout + 50)
    return got.stdout.strip()


def wait_for(what, cond, timeout=20):
    start = time.time()
    while True:
        got = cond()
        if got:
            return time.time() - start
        assert time.time() - start < timeout, f"{what} not seen in {timeout}s"
        time.sleep(0.1)


s3.create_bucket(Bucket="tiny", CreateBucketConfiguration={"LocationConstraint": "gumtree"})
for name, kind in [("vmlinuz", "kernel"), ("initrd.gz", "ramdisk"), ("disk.img", None)]:
    with open(os.path.join(TINY, name), "rb") as f:
        extra = {"Metadata": {"image-type": kind}} if kind else {}
        s3.put_object(Bucket="tiny", Key=name, Body=f.read(), **extra)
aki = ec2.register_image(ImageLocation="tiny/vmlinuz", Name="tiny-kernel")["ImageId"]
ari = ec2.register_image(ImageLocation="tiny/initrd.gz", Name="tiny-ramdisk")["ImageId"]
ami = ec2.register_image(ImageLocation="tiny/disk.img", Name="tiny", KernelId=aki, RamdiskId=ari)["ImageId"]
check("tiny guest registered")

types = {t["InstanceType"]: t for t in ec2.describe_instance_types()["InstanceTypes"]}
assert len(types) == 18 and types["m1.small"]["VCpuInfo"]["DefaultVCpus"] == 1, types.keys()
assert types["m1.small"]["MemoryInfo"]["SizeInMiB"] == 256
check("DescribeInstanceTypes: Eucalyptus' 18 types")

# Errors first: nothing may be left behind by them.
assert code_of(ec2.run_instances, ImageId="ami-00000000000000000", MinCount=1, MaxCount=1) == (
    "InvalidAMIID.NotFound", 400)
assert code_of(ec2.run_instances, ImageId=aki, MinCount=1, MaxCount=1) == ("InvalidAMIID.NotFound", 400)
assert code_of(ec2.run_instances, ImageId=ami, InstanceType="m9.huge", MinCount=1, MaxCount=1) == (
    "InvalidParameterValue", 400)
assert code_of(ec2.run_instances, ImageId=ami, MinCount=2, MaxCount=1)[0] == "InvalidParameterValue"
assert code_of(ec2.run_instances, ImageId=ami, MinCount=1, MaxCount=1, DryRun=True) == ("DryRunOperation", 412)
assert code_of(ec2.run_instances, ImageId=ami, MinCount=5, MaxCount=5) == ("InsufficientInstanceCapacity", 400)
assert code_of(ec2.run_instances, ImageId=ami, MinCount=1, MaxCount=1,
               Placement={"AvailabilityZone": "nowhere"}) == ("InvalidParameterValue", 400)
assert ec2.describe_instances()["Reservations"] == [], "failed launches recorded nothing"
check("RunInstances errors: unknown image, kernel as image, unknown type, counts, DryRun, capacity, zone")

user_data = "#!/bin/sh\necho hello\n"
started = time.time()
r = ec2.run_instances(ImageId=ami, InstanceType="m1.small", MinCount=1, MaxCount=1,
                      UserData=user_data, ClientToken="token-1")
iid = r["Instances"][0]["InstanceId"]
assert r["Instances"][0]["State"]["Name"] == "pending", r["Instances"][0]["State"]
assert r["Instances"][0]["KernelId"] == aki and r["Instances"][0]["RamdiskId"] == ari
assert r["Instances"][0]["Hypervisor"] == "kvm", r["Instances"][0]
again = ec2.run_instances(ImageId=ami, InstanceType="m1.small", MinCount=1, MaxCount=1,
                          UserData=user_data, ClientToken="token-1")
assert again["ReservationId"] == r["ReservationId"] and again["Instances"][0]["InstanceId"] == iid
waiter("instance_running", [iid])
running_after = time.time() - started
marker_wait = wait_console(iid)
print(f"timing: running {running_after:.1f}s, boot marker {time.time() - started:.1f}s after RunInstances", flush=True)
d = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
assert [i["InstanceId"] for res in d["Reservations"] for i in res["Instances"]] == [iid], d
inst = d["Reservations"][0]["Instances"][0]
assert inst["Placement"]["AvailabilityZone"] == "zone-1" and inst["InstanceType"] == "m1.small", inst
attr_ok = ec2.describe_instances(Filters=[{"Name": "image-id", "Values": [ami]},
                                          {"Name": "instance-type", "Values": ["m1.*"]}])
assert len(attr_ok["Reservations"]) == 1
assert ec2.describe_instances(Filters=[{"Name": "instance-type", "Values": ["c1.medium"]}])["Reservations"] == []
check("RunInstances (ClientToken idempotent), wait instance-running, console shows the boot marker, filters")

# The guest's private network: its DHCP lease, the metadata service and its user-data.
NETNS = os.environ.get("GUMTREE_NETNS")
if NETNS:
    start = time.time()
    while "GUMTREE-NET-OK" not in console(iid):
        assert time.time() - start < 120, f"no network marker:\n{console(iid)}"
        time.sleep(1)
    text = console(iid).replace("\r", "")
    print(f"timing: user-data on the console {time.time() - started:.1f}s after RunInstances", flush=True)
    inst = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    ip = inst["PrivateIpAddress"]
    assert f"GUMTREE-TINY-GUEST: network eth0 {ip}/24" in text, (ip, text)
    assert "GUMTREE-TINY-GUEST: metadata IMDSv2" in text, text
    assert f"GUMTREE-TINY-GUEST: instance-id {iid}" in text, text
    shown = text.split("GUMTREE-USER-DATA-BEGIN\n", 1)[1].split("\nGUMTREE-USER-DATA-END", 1)[0]
    assert shown + "\n" == user_data, (shown, user_data)
    # The guest answers on port 80 (from the namespace the nodes' network lives in).
    got = fetch(NETNS, f"http://{ip}/", timeout=10)
    assert got == iid, got
    # The guest runs a user-data script; this one reaches the first guest over the private network.
    assert "hello" in text.split("GUMTREE-NET-OK", 1)[1], text
    peer = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1,
                             UserData=f"#!/bin/sh\necho PEER-ANSWER $(wget -q -O - http://{ip}/)\n")
    peer = peer["Instances"][0]["InstanceId"]
    start = time.time()
    while f"PEER-ANSWER {iid}" not in console(peer):
        assert time.time() - start < 120, f"the second guest did not reach the first:\n{console(peer)}"
        time.sleep(1)
    ec2.terminate_instances(InstanceIds=[peer])
    waiter("instance_terminated", [peer])

    # Security groups filter for real: a guest in a group without rules takes nothing in;
    # authorizing port 80 opens it, revoking closes it again.
    closed = ec2.create_security_group(GroupName="closed", Description="nothing in")["GroupId"]
    target = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, SecurityGroupIds=[closed])["Instances"][0]
    tid, tip = target["InstanceId"], target["PrivateIpAddress"]
    probe = ("#!/bin/sh\nwhile true; do\n"
             f"  if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 1 {tip} 80 2>/dev/null | grep -q {tid}; then echo PROBE open; else echo PROBE closed; fi\n"
             "  sleep 0.2\ndone\n")
    prober = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, UserData=probe)["Instances"][0]["InstanceId"]

    def probes():
        return [l.strip() for l in console(prober).replace("\r", "").splitlines() if l.startswith("PROBE ")]

    def wait_probe(want, timeout):
        start = time.time()
        while True:
            seen = probes()
            # Two in a row, so one probe that straddled the change does not count.
            if len(seen) >= 2 and seen[-1] == seen[-2] == f"PROBE {want}":
                return time.time() - start
            assert time.time() - start < timeout, f"probe never {want}: {seen[-5:]}"
            time.sleep(0.2)

    start = time.time()
    while "GUMTREE-NET-OK" not in console(tid) or len(probes()) < 3:
        if time.time() - start > 120:
            import glob
            dump = subprocess.run(["ip", "netns", "exec", NETNS, "iptables", "-w", "-S"], capture_output=True, text=True).stdout
            for f in glob.glob("/tmp/gumtree-test-*/net/*/*"):
                dump += f"\n== {f}\n" + open(f, errors="replace").read()[-3000:]
            raise AssertionError(f"target or prober not up:\n{console(tid)}\n----\n{dump}")
        time.sleep(1)
    wait_probe("closed", 10)
    ec2.authorize_security_group_ingress(GroupId=closed, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    opened = wait_probe("open", 10)
    ec2.revoke_security_group_ingress(GroupId=closed, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    shut = wait_probe("closed", 10)
    print(f"timing: port seen open {opened:.1f}s after authorize, closed {shut:.1f}s after revoke "
          "(as the guest's probe sees it: 0.2 s cadence, 1 s timeout, console polled through the API)", flush=True)
    ec2.terminate_instances(InstanceIds=[tid, prober])
    waiter("instance_terminated", [tid, prober])
    ec2.delete_security_group(GroupId=closed)
    check("guest network: DHCP lease of its private address, IMDSv2 instance id, user-data verbatim on the console "
          "and run as a script, HTTP on port 80, a second guest reaches the first; a security group with no "
          "rules keeps a guest closed, authorize opens port 80, revoke closes it again")

# Elastic IPs, from an "outside world" namespace joined to the nodes' one: a port opened by the
# guest's group answers through the address and a closed one does not, what the guest sends out
# leaves as the address, re-association moves it; and a guest posing as another is cut off.
OUTSIDE = os.environ.get("GUMTREE_OUTSIDE_NETNS")
if NETNS and OUTSIDE:
    OUT_IP = os.environ["GUMTREE_OUTSIDE_IP"]
    calls_log = os.path.join(os.environ["HOME"], "outside-calls.log")
    open(calls_log, "w").close()
    # A web server out there noting who called: "<client address> <path>".
    server_code = ("import http.server, sys\n"
                   "class H(http.server.BaseHTTPRequestHandler):\n"
                   "    def do_GET(self):\n"
                   "        with open(sys.argv[1], 'a') as f:\n"
                   "            f.write(f'{self.client_address[0]} {self.path}\\n')\n"
                   "        self.send_response(200); self.end_headers(); self.wfile.write(b'outside')\n"
                   "    def log_message(self, *a):\n"
                   "        pass\n"
                   "http.server.ThreadingHTTPServer((sys.argv[2], 8000), H).serve_forever()\n")
    server = subprocess.Popen(["ip", "netns", "exec", OUTSIDE, sys.executable, "-c", server_code, calls_log, OUT_IP])
    def calls():
        return open(calls_log).read().splitlines()

    try:
        web = ec2.create_security_group(GroupName="web", Description="port 80 from anywhere")["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        caller = ("#!/bin/sh\nhttpd -p 8080 -h /www\n"
                  f"while true; do wget -q -O /dev/null http://{OUT_IP}:8000/from/$(cat /www/index.html); sleep 0.3; done\n")
        pair = ec2.run_instances(ImageId=ami, MinCount=2, MaxCount=2, SecurityGroupIds=[web], UserData=caller)
        a, b = [(i["InstanceId"], i["PrivateIpAddress"]) for i in pair["Instances"]]
        for g in (a, b):
            start = time.time()
            while "GUMTREE-NET-OK" not in console(g[0]):
                assert time.time() - start < 120, f"{g[0]} not up:\n{console(g[0])}"
                time.sleep(1)
        assert fetch(NETNS, f"http://{a[1]}:8080/") == a[0], "the guest serves port 8080 too"
        time.sleep(1)
        assert calls() == [], f"without a public address nothing it sends gets an answer: {calls()}"
        eip = ec2.allocate_address(Domain="vpc")
        public = eip["PublicIp"]
        assert fetch(OUTSIDE, f"http://{public}/").startswith("FAILED"), "nothing answers an unassociated address"
        # The node announces the address: a gratuitous ARP (sender and target both the address)
        # reaches the outside, as it would the router of a network the address moved in.
        garp_code = ("import socket, struct, sys, time\n"
                     "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))\n"
                     "s.settimeout(0.5); want = socket.inet_aton(sys.argv[1]); end = time.time() + 8\n"
                     "print('listening', flush=True)\n"
                     "while time.time() < end:\n"
                     "    try:\n"
                     "        f = s.recv(128)\n"
                     "    except socket.timeout:\n"
                     "        continue\n"
                     "    if f[28:32] == want and f[38:42] == want:\n"
                     "        print('GARP', flush=True); break\n")
        garp = subprocess.Popen(["ip", "netns", "exec", OUTSIDE, sys.executable, "-c", garp_code, public],
                                stdout=subprocess.PIPE, text=True)
        assert garp.stdout.readline().strip() == "listening"
        t0 = time.time()
        ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=a[0])
        assert "GARP" in garp.communicate(timeout=30)[0], "no gratuitous ARP for the address"
        wait_for("the guest through its elastic IP", lambda: fetch(OUTSIDE, f"http://{public}/") == a[0])
        reached = time.time() - t0
        assert fetch(OUTSIDE, f"http://{public}:8080/").startswith("FAILED"), "port 8080 is not in its group"
        wait_for("the guest's calls from its elastic IP", lambda: f"{public} /from/{a[0]}" in calls())
        assert all(l.split()[0] == public for l in calls()), calls()
        assert not any(b[0] in l for l in calls()), "the guest without a public address reached out"
        desc = {i["InstanceId"]: i for r in ec2.describe_instances(InstanceIds=[a[0], b[0]])["Reservations"]
                for i in r["Instances"]}
        assert desc[a[0]].get("PublicIpAddress") == public and "PublicIpAddress" not in desc[b[0]], desc
        # Re-association moves the address, and its traffic, to the other guest.
        t0 = time.time()
        ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=b[0], AllowReassociation=True)
        wait_for("the address moved", lambda: fetch(OUTSIDE, f"http://{public}/") == b[0])
        moved = time.time() - t0
        wait_for("the second guest's calls from the address", lambda: f"{public} /from/{b[0]}" in calls())
        # Revoking port 80 cuts new connections through the address within a second; authorizing
        # it again opens them (a prober outside notes each change with the host's clock).
        prober_code = ("import socket, sys, time\n"
                       "last, end = None, time.time() + float(sys.argv[2])\n"
                       "while time.time() < end:\n"
                       "    s = socket.socket(); s.settimeout(0.2)\n"
                       "    try:\n"
                       "        s.connect((sys.argv[1], 80)); state = 'open'\n"
                       "    except OSError:\n"
                       "        state = 'closed'\n"
                       "    s.close()\n"
                       "    if state != last:\n"
                       "        print(f'{time.time():.3f} {state}', flush=True); last = state\n"
                       "    time.sleep(0.05)\n")
        outside_prober = subprocess.Popen(["ip", "netns", "exec", OUTSIDE, sys.executable, "-c", prober_code, public, "6"],
                                          stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        port80 = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
        revoked_at = time.time()
        ec2.revoke_security_group_ingress(GroupId=web, IpPermissions=port80)
        time.sleep(2)
        authorized_at = time.time()
        ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=port80)
        changes = [(float(t), st) for t, st in (l.split() for l in outside_prober.communicate(timeout=30)[0].splitlines())]
        assert changes and changes[0][1] == "open", changes
        cut = next(t for t, st in changes if st == "closed" and t > revoked_at) - revoked_at
        reopened = next(t for t, st in changes if st == "open" and t > authorized_at) - authorized_at
        assert cut < 1.0, f"revoke took {cut:.2f}s to cut traffic: {changes}"
        print(f"timing: seen from outside, revoke cut port 80 after {cut:.2f}s, authorize opened it after "
              f"{reopened:.2f}s (0.2 s probe timeout, 0.05 s cadence)", flush=True)
        ec2.disassociate_address(PublicIp=public)
        wait_for("the address gone", lambda: fetch(OUTSIDE, f"http://{public}/").startswith("FAILED"))
        wait_for("the address off the node", lambda: f" {public}/32 " not in subprocess.run(
            ["ip", "netns", "exec", NETNS, "ip", "-o", "addr", "show"], capture_output=True, text=True).stdout,
            timeout=5)
        print(f"timing: elastic IP answered from outside {reached:.2f}s after AssociateAddress, "
              f"moved {moved:.2f}s after re-association", flush=True)

        # A guest that takes another's address is cut off: it cannot read that guest's metadata.
        # It takes the first guest's address and announces it (gratuitous ARP) before each try.
        spoof = ("#!/bin/sh\ngw=$(ip route | awk '/default/ {print $3}')\n"
                 f"ip addr flush dev eth0\nip addr add {a[1]}/24 dev eth0\nip route add default via $gw\n"
                 "got=\nfor i in 1 2 3 4; do\n"
                 f"  arping -q -U -c 2 -I eth0 -s {a[1]} {a[1]}\n"
                 "  got=$(timeout 3 wget -q -O - http://169.254.169.254/latest/meta-data/instance-id) && break\n"
                 "done\n"
                 "if [ -n \"$got\" ]; then echo SPOOF-READ $got; else echo SPOOF-BLOCKED; fi\n")
        liar = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, UserData=spoof)["Instances"][0]["InstanceId"]

        def outcome():
            text = console(liar).replace("\r", "")
            ran = text.split("GUMTREE-NET-OK", 1)[1] if "GUMTREE-NET-OK" in text else ""
            return next((l.strip() for l in ran.splitlines() if l.startswith("SPOOF-")), None)

        wait_for("the spoofing guest's outcome", outcome, timeout=120)
        assert outcome() == "SPOOF-BLOCKED", (outcome(), console(liar))
        ec2.terminate_instances(InstanceIds=[a[0], b[0], liar])
        waiter("instance_terminated", [a[0], b[0], liar])
        ec2.release_address(AllocationId=eip["AllocationId"])
        ec2.delete_security_group(GroupId=web)
    finally:
        server.kill()
    check("elastic IP: port 80 (in the group) reached from outside through it, 8080 (not in it) not; the guest's "
          "calls leave as the address; re-association moves it; a guest posing as another cannot reach the "
          "metadata service")

# Another account neither sees nor touches it.
assert other.describe_instances()["Reservations"] == []
assert code_of(other.terminate_instances, InstanceIds=[iid]) == ("InvalidInstanceID.NotFound", 400)
assert code_of(other.get_console_output, InstanceId=iid) == ("InvalidInstanceID.NotFound", 400)
assert code_of(ec2.describe_instances, InstanceIds=["i-00000000000000000"]) == ("InvalidInstanceID.NotFound", 400)
assert code_of(ec2.describe_instances, InstanceIds=["nope"]) == ("InvalidInstanceID.Malformed", 400)
check("isolation: another account gets InvalidInstanceID.NotFound")

# Stop, start, reboot: a new boot each time.
assert code_of(ec2.start_instances, InstanceIds=[iid], DryRun=True) == ("DryRunOperation", 412)
s = ec2.stop_instances(InstanceIds=[iid])["StoppingInstances"][0]
assert s["PreviousState"]["Name"] == "running" and s["CurrentState"]["Name"] == "stopping", s
waiter("instance_stopped", [iid])
if NETNS:
    # A stopped instance's rules and guard come off the node, and go back on when it starts.
    tap = "gi" + iid[2:15]

    def ours_on_node():
        rules = subprocess.run(["ip", "netns", "exec", NETNS, "iptables-save"], capture_output=True, text=True).stdout
        guard = subprocess.run(["ip", "netns", "exec", NETNS, "ebtables-save"], capture_output=True, text=True).stdout
        return tap in rules or tap in guard

    start = time.time()
    while ours_on_node():
        assert time.time() - start < 10, "a stopped instance's rules stay on its node"
        time.sleep(0.2)
assert code_of(ec2.reboot_instances, InstanceIds=[iid]) == ("IncorrectInstanceState", 400)
# Resize while stopped: c1.medium has 2 cores and 512 MiB.
ec2.modify_instance_attribute(InstanceId=iid, InstanceType={"Value": "c1.medium"})
attr = ec2.describe_instance_attribute(InstanceId=iid, Attribute="instanceType")
assert attr["InstanceType"]["Value"] == "c1.medium", attr
assert ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")["UserData"]["Value"] == \
    base64.b64encode(user_data.encode()).decode()
assert code_of(ec2.modify_instance_attribute, InstanceId=iid, InstanceType={"Value": "hs1.8xlarge"}) == (
    "InsufficientInstanceCapacity", 400)
ec2.start_instances(InstanceIds=[iid])
waiter("instance_running", [iid])
if NETNS:
    assert ours_on_node(), "a started instance's rules are back"
wait_console(iid, 2)
assert "2 cpu(s)" in console(iid).split(MARKER)[1], "the second boot has two CPUs"
assert code_of(ec2.modify_instance_attribute, InstanceId=iid, InstanceType={"Value": "m1.small"}) == (
    "IncorrectInstanceState", 400)
# The instance's own check passes once its guest has written to its console
# since it started (the node reports it within a heartbeat).
for _ in range(40):
    status = ec2.describe_instance_status(InstanceIds=[iid])["InstanceStatuses"]
    if status[0]["InstanceStatus"]["Status"] == "ok":
        break
    assert status[0]["InstanceStatus"]["Status"] == "initializing", status
    time.sleep(0.5)
assert status[0]["InstanceState"]["Name"] == "running" and status[0]["InstanceStatus"]["Status"] == "ok", status
assert status[0]["InstanceStatus"]["Details"][0]["Status"] == "passed", status
ec2.reboot_instances(InstanceIds=[iid])
wait_console(iid, 3)
check("stop (wait instance-stopped), resize to c1.medium, start (second boot, 2 CPUs), reboot (third boot), instance status")

t = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
assert t["CurrentState"]["Name"] in ("shutting-down", "terminated"), t
waiter("instance_terminated", [iid])
assert state(iid) == "terminated", "terminated instances stay visible for a while"
t = ec2.terminate_instances(InstanceIds=[iid])["TerminatingInstances"][0]
assert t["CurrentState"]["Name"] == "terminated"
assert code_of(ec2.start_instances, InstanceIds=[iid]) == ("IncorrectInstanceState", 400)
check("terminate (wait instance-terminated; terminating again is harmless)")

# MaxCount=3 on nodes of 2 cores each: all three start, spread by the policy.
r = ec2.run_instances(ImageId=ami, InstanceType="m1.small", MinCount=1, MaxCount=3)
ids = [i["InstanceId"] for i in r["Instances"]]
assert len(ids) == 3 and sorted(i["AmiLaunchIndex"] for i in r["Instances"]) == [0, 1, 2]
waiter("instance_running", ids)
for i in ids:
    wait_console(i)
# Only one core is left: MinCount=2 cannot be met, MaxCount=2 gives one.
assert code_of(ec2.run_instances, ImageId=ami, MinCount=2, MaxCount=2) == ("InsufficientInstanceCapacity", 400)
one = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=2)
assert len(one["Instances"]) == 1, "AWS gives as many as fit between MinCount and MaxCount"
ids.append(one["Instances"][0]["InstanceId"])
ec2.terminate_instances(InstanceIds=ids)
waiter("instance_terminated", ids)
check("MaxCount=3 runs three guests; MinCount/MaxCount all-or-nothing against capacity")
# boto 2.49 as euca2ools-era scripts use it: SigV2 at /services/Eucalyptus,
# with a key pair, run, wait for running, read the console, terminate.
u = urllib.parse.urlparse(EC2)
conn = boto.connect_euca(host=u.hostname, port=u.port, is_secure=False, path="/services/Eucalyptus",
                         aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])
kp = conn.create_key_pair("boto2-key")
assert kp.material.startswith("-----BEGIN RSA PRIVATE KEY-----") and len(kp.fingerprint) == 59, vars(kp)
res = conn.run_instances(ami, instance_type="m1.small", key_name="boto2-key")
inst = res.instances[0]
assert inst.image_id == ami and inst.key_name == "boto2-key", vars(inst)
start = time.time()
while inst.update() != "running":
    assert time.time() - start < 120, f"boto2 instance stuck in {inst.state}"
    time.sleep(1)
wait_console(inst.id)
assert MARKER in conn.get_console_output(inst.id).output.decode(errors="replace")
conn.terminate_instances([inst.id])
while inst.update() != "terminated":
    assert time.time() - start < 240, f"boto2 instance stuck in {inst.state}"
    time.sleep(1)
conn.delete_key_pair("boto2-key")
check("boto 2 connect_euca: create_key_pair, run_instances, running, console, terminate")
print(f"instances: all checks passed (marker wait {marker_wait:.1f}s)")
