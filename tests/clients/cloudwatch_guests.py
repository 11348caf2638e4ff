"""Instance metrics from real guests (QEMU here), read with boto3 in CBOR
and in JSON, a hand-signed awsJson1_0 call and the AWS CLI v2 from Debian
(Query): a guest running a busy loop from its user-data shows
CPUUtilization near 100 %, an idle one near 0; the idle one's network
counters grow while it serves HTTP; an alarm on CPUUtilization > 80 for two
periods stops the busy instance; another account sees none of it.

Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (an account),
GUMTREE_OTHER_KEY / GUMTREE_OTHER_SECRET, GUMTREE_EC2_ENDPOINT,
GUMTREE_CW_ENDPOINT, GUMTREE_AMI (the tiny guest), GUMTREE_OUTSIDE_NETNS,
GUMTREE_AWS_V2 (the Debian AWS CLI), GUMTREE_SAMPLE_SECS.
"""

import datetime
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from checks import check
from cw_clients import cbor_session

EC2 = os.environ["GUMTREE_EC2_ENDPOINT"]
CW = os.environ["GUMTREE_CW_ENDPOINT"]
AMI = os.environ["GUMTREE_AMI"]
OUTSIDE = os.environ["GUMTREE_OUTSIDE_NETNS"]
AWS2 = os.environ["GUMTREE_AWS_V2"]
SAMPLE = int(os.environ["GUMTREE_SAMPLE_SECS"])
cfg = Config(retries={"max_attempts": 1})
ec2 = boto3.client("ec2", endpoint_url=EC2, region_name="gumtree", config=cfg)
cw = cbor_session().client("cloudwatch", endpoint_url=CW, region_name="gumtree", config=cfg)
cw_json = boto3.client("cloudwatch", endpoint_url=CW, region_name="gumtree", config=cfg)
other_kw = dict(aws_access_key_id=os.environ["GUMTREE_OTHER_KEY"],
                aws_secret_access_key=os.environ["GUMTREE_OTHER_SECRET"])
other = boto3.client("cloudwatch", endpoint_url=CW, region_name="gumtree", config=cfg, **other_kw)
creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])
UTC = datetime.timezone.utc


def wait_for(what, cond, timeout):
    start = time.time()
    while True:
        got = cond()
        if got:
            print(f"  {what}: {time.time() - start:.1f} s", flush=True)
            return got
        if time.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(1)


def state(iid):
    r = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    return r["State"]["Name"], r


def dims(iid):
    return [{"Name": "InstanceId", "Value": iid}]


def cpu_points(client, iid, stat="Average", period=60, minutes=15):
    now = datetime.datetime.now(UTC)
    r = client.get_metric_statistics(Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims(iid),
                                     StartTime=now - datetime.timedelta(minutes=minutes),
                                     EndTime=now + datetime.timedelta(minutes=1), Period=period, Statistics=[stat])
    return sorted(r["Datapoints"], key=lambda d: d["Timestamp"])


def busy_loop_shows(iid):
    points = cpu_points(cw, iid, "Maximum")
    return points and points[-1]["Maximum"] >= 80 and points


# ---- a busy guest (detailed monitoring) and an idle one ----
busy_data = "#!/bin/sh\n(while :; do :; done) > /dev/null 2>&1 &\n"
busy = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="m1.small", UserData=busy_data,
                         Monitoring={"Enabled": True})["Instances"][0]["InstanceId"]
idle = ec2.run_instances(ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="m1.small",
                         UserData="idle")["Instances"][0]["InstanceId"]
wait_for("both running", lambda: state(busy)[0] == "running" and state(idle)[0] == "running", 240)
running_at = time.time()
assert state(busy)[1]["Monitoring"]["State"] == "enabled", state(busy)[1]["Monitoring"]
assert state(idle)[1]["Monitoring"]["State"] == "disabled", state(idle)[1]["Monitoring"]
mon = ec2.monitor_instances(InstanceIds=[idle])["InstanceMonitorings"]
assert mon == [{"InstanceId": idle, "Monitoring": {"State": "pending"}}], mon
assert state(idle)[1]["Monitoring"]["State"] == "enabled"
mon = ec2.unmonitor_instances(InstanceIds=[idle])["InstanceMonitorings"]
assert mon[0]["Monitoring"]["State"] == "disabling", mon
assert state(idle)[1]["Monitoring"]["State"] == "disabled"
check("RunInstances Monitoring.Enabled, Monitor/UnmonitorInstances, monitoring.state in DescribeInstances")

# ---- CPUUtilization: near 100 % busy, near 0 idle, in every protocol ----
points = wait_for("CPUUtilization of the busy guest >= 80 %", lambda: busy_loop_shows(busy), 20 + 4 * SAMPLE)
print(f"  busy guest's CPUUtilization by minute: {[round(p['Maximum'], 1) for p in points]}")
assert time.time() - running_at < 60 + 4 * SAMPLE
idle_points = wait_for("CPUUtilization of the idle guest", lambda: cpu_points(cw, idle, "Average", 60), 60)
# Basic monitoring: 5-minute points (asked by the minute, they fall on
# every fifth).
assert all(p["Timestamp"].minute % 5 == 0 and p["Timestamp"].second == 0 for p in idle_points), idle_points
assert idle_points[-1]["Average"] < 20, idle_points
assert idle_points[-1]["Unit"] == "Percent"
json_points = cpu_points(cw_json, busy, "Maximum")
assert json_points[-1]["Maximum"] >= 80, json_points
# awsJson1_0 by hand.
now = time.time()
body = json.dumps({"Namespace": "AWS/EC2", "MetricName": "CPUUtilization", "Dimensions": dims(busy),
                   "StartTime": now - 900, "EndTime": now + 60, "Period": 60, "Statistics": ["Maximum"]})
req = AWSRequest(method="POST", url=CW, data=body, headers={
    "Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "GraniteServiceVersion20100801.GetMetricStatistics"})
SigV4Auth(creds, "monitoring", "gumtree").add_auth(req)
p = req.prepare()
with urllib.request.urlopen(urllib.request.Request(p.url, data=body.encode(), headers=dict(p.headers),
                                                   method="POST")) as r:
    raw = json.loads(r.read())
assert max(d["Maximum"] for d in raw["Datapoints"]) >= 80, raw
# The AWS CLI v2 from Debian speaks the Query protocol.
out = subprocess.run([AWS2, "--endpoint-url", CW, "cloudwatch", "get-metric-statistics", "--namespace", "AWS/EC2",
                      "--metric-name", "CPUUtilization", "--dimensions", f"Name=InstanceId,Value={busy}",
                      "--start-time", str(int(now - 900)), "--end-time", str(int(now + 60)), "--period", "60",
                      "--statistics", "Maximum", "--output", "json"], capture_output=True, text=True)
assert out.returncode == 0, out.stderr
assert max(d["Maximum"] for d in json.loads(out.stdout)["Datapoints"]) >= 80, out.stdout
# The aggregates, and the listing.
agg = cw.get_metric_statistics(Namespace="AWS/EC2", MetricName="CPUUtilization",
                               Dimensions=[{"Name": "ImageId", "Value": AMI}],
                               StartTime=datetime.datetime.now(UTC) - datetime.timedelta(minutes=15),
                               EndTime=datetime.datetime.now(UTC), Period=900, Statistics=["SampleCount"])
# Both guests' samples (the periods count from StartTime: there may be two).
assert sum(d["SampleCount"] for d in agg["Datapoints"]) >= 2, agg
listed = cw.list_metrics(Namespace="AWS/EC2", Dimensions=[{"Name": "InstanceId", "Value": busy}])["Metrics"]
names = {m["MetricName"] for m in listed}
assert {"CPUUtilization", "NetworkIn", "NetworkOut", "NetworkPacketsIn", "NetworkPacketsOut", "DiskReadBytes",
        "DiskWriteBytes", "DiskReadOps", "DiskWriteOps", "StatusCheckFailed"} <= names, names
check("CPUUtilization: busy guest >= 80 % (boto3 CBOR and JSON, raw JSON, AWS CLI v2 Query), idle < 20 % "
      "in 5-minute points; per-image aggregate; ListMetrics has EC2's metrics")

# ---- network counters grow while the idle guest serves HTTP ----
ec2.authorize_security_group_ingress(GroupName="default", IpPermissions=[
    {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
public = state(idle)[1]["PublicIpAddress"]


def network_out():
    now = datetime.datetime.now(UTC)
    r = cw.get_metric_statistics(Namespace="AWS/EC2", MetricName="NetworkOut", Dimensions=dims(idle),
                                 StartTime=now - datetime.timedelta(minutes=20), EndTime=now + datetime.timedelta(minutes=5),
                                 Period=1500, Statistics=["Sum"])
    return sum(d["Sum"] for d in r["Datapoints"])


FETCH = ("import sys, urllib.request\n"
         "n = 0\n"
         "for i in range(int(sys.argv[2])):\n"
         "    try:\n"
         "        n += len(urllib.request.urlopen(sys.argv[1], timeout=3).read())\n"
         "    except Exception as e:\n"
         "        pass\n"
         "print(n)\n")
got = subprocess.run(["ip", "netns", "exec", OUTSIDE, sys.executable, "-c", FETCH, f"http://{public}/", "1"],
                     capture_output=True, text=True, timeout=60)
wait_for("the idle guest's page", lambda: subprocess.run(
    ["ip", "netns", "exec", OUTSIDE, sys.executable, "-c", FETCH, f"http://{public}/", "1"],
    capture_output=True, text=True, timeout=60).stdout.strip() not in ("", "0"), 60)
time.sleep(SAMPLE + 3)  # the fetches above are in a stored sample
before = network_out()
got = subprocess.run(["ip", "netns", "exec", OUTSIDE, sys.executable, "-c", FETCH, f"http://{public}/", "200"],
                     capture_output=True, text=True, timeout=300)
served = int(got.stdout.strip() or 0)
assert served > 0, got
after = wait_for("NetworkOut grown by what the guest served", lambda: (
    lambda n: n >= before + served and n)(network_out()), 20 + 3 * SAMPLE)
print(f"  served {served} bytes of pages; NetworkOut {before:.0f} -> {after:.0f} bytes")
check("NetworkOut grows by at least the bytes of the pages the guest served")

# ---- an alarm with a stop action stops the busy instance ----
cw.put_metric_alarm(AlarmName="busy-cpu", Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims(busy),
                    Statistic="Average", Period=60, EvaluationPeriods=2, Threshold=80.0,
                    ComparisonOperator="GreaterThanThreshold",
                    AlarmActions=["arn:aws:automate:gumtree:ec2:stop"])
alarm_at = time.time()
wait_for("the alarm stopped the busy instance", lambda: state(busy)[0] == "stopped", 200)
print(f"  stopped {time.time() - alarm_at:.1f} s after the alarm was put")
a = cw.describe_alarms(AlarmNames=["busy-cpu"])["MetricAlarms"][0]
assert a["StateValue"] == "ALARM", a
assert "greater than the threshold (80" in a["StateReason"], a
actions = cw.describe_alarm_history(AlarmName="busy-cpu", HistoryItemType="Action")["AlarmHistoryItems"]
assert [h["HistorySummary"] for h in actions] == [
    "Successfully executed action arn:aws:automate:gumtree:ec2:stop"], actions
assert state(idle)[0] == "running"
check("an alarm on CPUUtilization > 80 for 2 periods with an EC2 stop action stopped the busy instance")

# ---- another account sees none of it ----
assert other.list_metrics(Namespace="AWS/EC2")["Metrics"] == []
assert other.get_metric_statistics(Namespace="AWS/EC2", MetricName="CPUUtilization", Dimensions=dims(busy),
                                   StartTime=datetime.datetime.now(UTC) - datetime.timedelta(minutes=30),
                                   EndTime=datetime.datetime.now(UTC), Period=60,
                                   Statistics=["Maximum"])["Datapoints"] == []
assert other.describe_alarms()["MetricAlarms"] == []
check("another account sees none of these instances' metrics or alarms")

ec2.terminate_instances(InstanceIds=[busy, idle])
wait_for("both terminated", lambda: state(busy)[0] == "terminated" and state(idle)[0] == "terminated", 120)
assert cpu_points(cw, busy, "Maximum")[-1]["Maximum"] >= 80, "a terminated instance's metrics stay"
check("a terminated instance's metrics stay queryable")
print(f"BUSY={busy} IDLE={idle}")
print("cloudwatch guests: all checks passed")
