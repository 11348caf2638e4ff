"""The CloudWatch API with boto3 in each protocol botocore has for it:
smithy-rpc-v2-cbor (the model's first; botocore 1.44 itself prefers
awsJson1_0, so a client is made with a model that offers only CBOR, as
SDKs that pick CBOR do), awsJson1_0 (boto3 as it comes) and Query calls
signed with botocore's SigV4: custom metrics
round-trip exactly, statistics, percentiles, metric math, listings with
paging, alarms and their history, CloudWatch's errors for bad input (with
nothing stored), and another account sees none of it.

Environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (an account),
GUMTREE_OTHER_KEY / GUMTREE_OTHER_SECRET (another), GUMTREE_CW_ENDPOINT.
"""

import datetime
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from checks import check, code_of
from cw_clients import cbor_session

CW = os.environ["GUMTREE_CW_ENDPOINT"]
cfg = Config(retries={"max_attempts": 1})


cw = cbor_session().client("cloudwatch", endpoint_url=CW, region_name="gumtree", config=cfg)
assert cw.meta.service_model.resolved_protocol == "smithy-rpc-v2-cbor", cw.meta.service_model.resolved_protocol
cw_json = boto3.client("cloudwatch", endpoint_url=CW, region_name="gumtree", config=cfg)
assert cw_json.meta.service_model.resolved_protocol == "json", cw_json.meta.service_model.resolved_protocol
other = boto3.client("cloudwatch", endpoint_url=CW, region_name="gumtree", config=cfg,
                     aws_access_key_id=os.environ["GUMTREE_OTHER_KEY"],
                     aws_secret_access_key=os.environ["GUMTREE_OTHER_SECRET"])
creds = Credentials(os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])

now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
# A minute boundary a few minutes back, so every point falls in known minutes.
base = now.replace(second=0) - datetime.timedelta(minutes=10)
dim = [{"Name": "Host", "Value": "web-1"}]


def stats(**kw):
    args = dict(Namespace="Lab/App", MetricName="Latency", Dimensions=dim,
                StartTime=base - datetime.timedelta(minutes=1),
                EndTime=base + datetime.timedelta(minutes=5), Period=60)
    args.update(kw)
    return cw.get_metric_statistics(**args)


# ---- PutMetricData round trips exact sums ----
values = [1.5, 2.25, 3.0, 100.0, 0.125]
cw.put_metric_data(Namespace="Lab/App", MetricData=[
    {"MetricName": "Latency", "Dimensions": dim, "Timestamp": base + datetime.timedelta(seconds=5 + i),
     "Value": v, "Unit": "Milliseconds"} for i, v in enumerate(values)])
# Values with counts and a statistic set, in the next minute.
cw.put_metric_data(Namespace="Lab/App", MetricData=[
    {"MetricName": "Latency", "Dimensions": dim, "Timestamp": base + datetime.timedelta(seconds=70),
     "Values": [10.0, 20.0], "Counts": [3, 1], "Unit": "Milliseconds"},
    {"MetricName": "Latency", "Dimensions": dim, "Timestamp": base + datetime.timedelta(seconds=80),
     "StatisticValues": {"SampleCount": 4, "Sum": 40.0, "Minimum": 5.0, "Maximum": 15.0},
     "Unit": "Milliseconds"}])
r = stats(Statistics=["Sum", "SampleCount", "Average", "Minimum", "Maximum"])
points = sorted(r["Datapoints"], key=lambda d: d["Timestamp"])
assert r["Label"] == "Latency", r
assert len(points) == 2, points
first, second = points
assert first["Timestamp"] == base, (first, base)
assert first["Sum"] == sum(values) and first["SampleCount"] == 5, first
assert first["Minimum"] == 0.125 and first["Maximum"] == 100.0, first
assert abs(first["Average"] - sum(values) / 5) < 1e-9, first
assert first["Unit"] == "Milliseconds", first
assert second["Sum"] == 10 * 3 + 20 + 40 and second["SampleCount"] == 8, second
assert second["Minimum"] == 5.0 and second["Maximum"] == 20.0, second
json_points = sorted(cw_json.get_metric_statistics(
    Namespace="Lab/App", MetricName="Latency", Dimensions=dim, StartTime=base - datetime.timedelta(minutes=1),
    EndTime=base + datetime.timedelta(minutes=5), Period=60, Statistics=["Sum", "SampleCount", "Average", "Minimum", "Maximum"]
)["Datapoints"], key=lambda d: d["Timestamp"])
assert json_points == points, (json_points, points)
check("PutMetricData (Value, Values/Counts, StatisticValues) then GetMetricStatistics: exact sums, "
      "the same in CBOR and JSON")

# A 5-minute period sums both minutes; the unit filter; percentiles.
r = stats(Period=300, StartTime=base, EndTime=base + datetime.timedelta(minutes=5),
          Statistics=["Sum"])
assert [d["Sum"] for d in r["Datapoints"]] == [sum(values) + 90], r
assert stats(Statistics=["Sum"], Unit="Seconds")["Datapoints"] == []
r = stats(ExtendedStatistics=["p50", "p99"], StartTime=base, EndTime=base + datetime.timedelta(minutes=1))
ext = r["Datapoints"][0]["ExtendedStatistics"]
assert ext == {"p50": 2.25, "p99": 100.0}, ext
check("periods of 5 minutes, Unit filter, percentiles")

# ---- GetMetricData: stats and metric math ----
cw.put_metric_data(Namespace="Lab/App", MetricData=[
    {"MetricName": "Requests", "Dimensions": [{"Name": "Host", "Value": h}],
     "Timestamp": base + datetime.timedelta(seconds=s), "Value": v, "Unit": "Count"}
    for h, s, v in [("web-1", 1, 10), ("web-1", 61, 20), ("web-2", 2, 1), ("web-2", 62, 2)]])
q = lambda i, host: {"Id": i, "MetricStat": {"Metric": {
    "Namespace": "Lab/App", "MetricName": "Requests", "Dimensions": [{"Name": "Host", "Value": host}]},
    "Period": 60, "Stat": "Sum"}, "ReturnData": False}
r = cw.get_metric_data(
    MetricDataQueries=[q("a", "web-1"), q("b", "web-2"),
                       {"Id": "total", "Expression": "SUM(METRICS())", "Label": "all hosts"},
                       {"Id": "ratio", "Expression": "a / b"},
                       {"Id": "peak", "Expression": "MAX(a)"}],
    StartTime=base, EndTime=base + datetime.timedelta(minutes=3), ScanBy="TimestampAscending")
res = {m["Id"]: m for m in r["MetricDataResults"]}
assert set(res) == {"total", "ratio", "peak"}, res
assert res["total"]["Label"] == "all hosts" and res["total"]["Values"] == [11.0, 22.0], res["total"]
assert res["total"]["Timestamps"] == [base, base + datetime.timedelta(minutes=1)], res["total"]
assert res["ratio"]["Values"] == [10.0, 10.0], res["ratio"]
assert res["peak"]["Values"] == [20.0, 20.0], res["peak"]
assert all(m["StatusCode"] == "Complete" for m in r["MetricDataResults"])
r = cw.get_metric_data(MetricDataQueries=[dict(q("a", "web-1"), ReturnData=True)],
                       StartTime=base, EndTime=base + datetime.timedelta(minutes=3))
assert r["MetricDataResults"][0]["Values"] == [20.0, 10.0], r  # newest first by default
# Pages of at most one point, followed with NextToken by boto3's paginator.
pages = list(cw.get_paginator("get_metric_data").paginate(
    MetricDataQueries=[dict(q("a", "web-1"), ReturnData=True), dict(q("b", "web-2"), ReturnData=True)],
    StartTime=base, EndTime=base + datetime.timedelta(minutes=3), MaxDatapoints=1))
assert len(pages) == 4, pages
got = sorted((m["Id"], v) for p in pages for m in p["MetricDataResults"] for v in m["Values"])
assert got == [("a", 10.0), ("a", 20.0), ("b", 1.0), ("b", 2.0)], got
assert code_of(cw.get_metric_data, MetricDataQueries=[q("a", "web-1")], StartTime=base, EndTime=now,
               NextToken="not-ours") == ("InvalidNextToken", 400)
check("GetMetricData: MetricStat, SUM(METRICS()), a / b, MAX(a), ScanBy, pages by MaxDatapoints")

# ---- ListMetrics: filters and paging ----
many = [{"MetricName": "Shard", "Dimensions": [{"Name": "Shard", "Value": f"s{i:04}"}], "Value": i}
        for i in range(520)]
cw.put_metric_data(Namespace="Lab/Many", MetricData=many)
page = cw.list_metrics(Namespace="Lab/Many")
assert len(page["Metrics"]) == 500 and "NextToken" in page, len(page["Metrics"])
rest = cw.list_metrics(Namespace="Lab/Many", NextToken=page["NextToken"])
assert len(rest["Metrics"]) == 20 and "NextToken" not in rest, rest.keys()
names = {m["Dimensions"][0]["Value"] for m in page["Metrics"] + rest["Metrics"]}
assert len(names) == 520
web2 = cw.list_metrics(Dimensions=[{"Name": "Host", "Value": "web-2"}])["Metrics"]
assert web2 == [{"Namespace": "Lab/App", "MetricName": "Requests",
                 "Dimensions": [{"Name": "Host", "Value": "web-2"}]}], web2
paginated = sum(len(p["Metrics"]) for p in cw_json.get_paginator("list_metrics").paginate(Namespace="Lab/Many"))
assert paginated == 520, paginated
cw_json.put_metric_data(Namespace="Lab/Gzip", MetricData=many)  # compressed: over 10 KiB
assert len(cw.list_metrics(Namespace="Lab/Gzip", MetricName="Shard")["Metrics"]) == 500
check("ListMetrics: 520 metrics in pages of 500 (one gzipped PutMetricData), dimension filter, paginator")

# ---- bad input: CloudWatch's codes, nothing stored ----
bad = [
    (dict(Namespace="AWS/EC2", MetricData=[{"MetricName": "x", "Value": 1}]), "InvalidParameterValue"),
    (dict(Namespace="Lab/Bad", MetricData=[{"MetricName": "x", "Value": 1,
                                            "StatisticValues": {"SampleCount": 1, "Sum": 1, "Minimum": 1, "Maximum": 1}}]),
     "InvalidParameterCombination"),
    (dict(Namespace="Lab/Bad", MetricData=[{"MetricName": "x", "Values": [1, 2], "Counts": [1]}]), "InvalidParameterValue"),
    (dict(Namespace="Lab/Bad", MetricData=[{"MetricName": "x", "Value": 1,
                                            "Timestamp": now - datetime.timedelta(days=15)}]), "InvalidParameterValue"),
    (dict(Namespace="Lab/Bad", MetricData=[{"MetricName": "ok", "Value": 1},
                                           {"MetricName": "x", "Value": 1, "StorageResolution": 7}]), "InvalidParameterValue"),
    (dict(Namespace="Lab/Bad", MetricData=[{"MetricName": "x", "Value": 1, "Unit": "Furlongs"}]), "InvalidParameterValue"),
]
for kw, want in bad:
    got = code_of(cw.put_metric_data, **kw)
    assert got == (want, 400), (kw, got)
assert cw.list_metrics(Namespace="Lab/Bad")["Metrics"] == [], "a refused batch stored nothing"
assert code_of(stats, Statistics=["Median"]) == ("InvalidParameterValue", 400)
assert code_of(stats, Statistics=["Sum"], Period=90) == ("InvalidParameterValue", 400)
assert code_of(stats, Statistics=["Sum"], ExtendedStatistics=["p90"]) == ("InvalidParameterCombination", 400)
assert code_of(stats, Statistics=["Sum"], StartTime=base - datetime.timedelta(days=2)) == ("InvalidParameterCombination", 400)
assert code_of(stats, Statistics=["Sum"], EndTime=base - datetime.timedelta(hours=1)) == ("InvalidParameterValue", 400)
assert code_of(cw.get_metric_data, MetricDataQueries=[{"Id": "e", "Expression": "SUM(nope)"}],
               StartTime=base, EndTime=now) == ("ValidationError", 400)
assert code_of(cw.get_metric_data, MetricDataQueries=[{"Id": "E1", "Expression": "1"}],
               StartTime=base, EndTime=now) == ("ValidationError", 400)
check("bad input: AWS/ namespace, both Value and StatisticValues, Values/Counts sizes, 15-day-old timestamps, "
      "StorageResolution, units, statistics, periods, 1,441+ datapoints, bad expressions and ids")

# ---- alarms ----
cw.put_metric_alarm(AlarmName="latency-high", Namespace="Lab/App", MetricName="Latency", Dimensions=dim,
                    Statistic="Average", Period=60, EvaluationPeriods=2, Threshold=50.0,
                    ComparisonOperator="GreaterThanThreshold", AlarmDescription="too slow")
a = cw.describe_alarms(AlarmNames=["latency-high"])["MetricAlarms"][0]
assert a["StateValue"] == "INSUFFICIENT_DATA" and a["Threshold"] == 50.0 and a["Period"] == 60, a
assert a["AlarmArn"].startswith("arn:aws:cloudwatch:gumtree:") and a["AlarmArn"].endswith(":alarm:latency-high"), a
assert a["Dimensions"] == dim and a["AlarmDescription"] == "too slow", a
# Two minutes above the threshold, published now: the alarm fires.
t = datetime.datetime.now(datetime.timezone.utc)
cw.put_metric_data(Namespace="Lab/App", MetricData=[
    {"MetricName": "Latency", "Dimensions": dim, "Timestamp": t - datetime.timedelta(seconds=s), "Value": 90.0}
    for s in (0, 60)])
deadline = time.time() + 30
while time.time() < deadline:
    a = cw.describe_alarms(AlarmNames=["latency-high"])["MetricAlarms"][0]
    if a["StateValue"] == "ALARM":
        break
    time.sleep(1)
assert a["StateValue"] == "ALARM", a
assert "Threshold Crossed" in a["StateReason"], a
for_metric = cw.describe_alarms_for_metric(Namespace="Lab/App", MetricName="Latency", Dimensions=dim)
assert [x["AlarmName"] for x in for_metric["MetricAlarms"]] == ["latency-high"], for_metric
assert cw.describe_alarms(StateValue="OK")["MetricAlarms"] == []
cw.disable_alarm_actions(AlarmNames=["latency-high"])
assert cw.describe_alarms(AlarmNames=["latency-high"])["MetricAlarms"][0]["ActionsEnabled"] is False
cw.enable_alarm_actions(AlarmNames=["latency-high"])
# SetAlarmState on an alarm whose evaluations leave it be (no data, ignored).
cw.put_metric_alarm(AlarmName="manual", Namespace="Lab/App", MetricName="Unused", Statistic="Sum",
                    Period=60, EvaluationPeriods=1, Threshold=1.0, TreatMissingData="ignore",
                    ComparisonOperator="GreaterThanOrEqualToThreshold")
cw.set_alarm_state(AlarmName="manual", StateValue="ALARM", StateReason="by hand")
cw.set_alarm_state(AlarmName="manual", StateValue="OK", StateReason="fixed by hand",
                   StateReasonData='{"ticket": 7}')
time.sleep(6)  # an evaluation or more
m = cw.describe_alarms(AlarmNamePrefix="man")["MetricAlarms"]
assert [(x["AlarmName"], x["StateValue"], x["StateReason"]) for x in m] == [("manual", "OK", "fixed by hand")], m
assert json.loads(m[0]["StateReasonData"]) == {"ticket": 7}, m
hist = cw.describe_alarm_history(AlarmName="manual", HistoryItemType="StateUpdate")["AlarmHistoryItems"]
assert [h["HistorySummary"] for h in hist] == [
    "Alarm updated from ALARM to OK", "Alarm updated from INSUFFICIENT_DATA to ALARM"], hist
assert all(json.loads(h["HistoryData"]) for h in hist)
configs = cw.describe_alarm_history(AlarmName="latency-high", HistoryItemType="ConfigurationUpdate")["AlarmHistoryItems"]
assert len(configs) == 3, configs  # created, actions off, actions on
assert code_of(cw.set_alarm_state, AlarmName="nope", StateValue="OK", StateReason="x") == ("ResourceNotFound", 404)
assert code_of(cw.set_alarm_state, AlarmName="latency-high", StateValue="OK", StateReason="x",
               StateReasonData="{not json") == ("InvalidFormat", 400)
assert code_of(cw.put_metric_alarm, AlarmName="bad", Namespace="Lab/App", MetricName="Latency", Statistic="Average",
               Period=60, EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold",
               AlarmActions=["arn:aws:automate:gumtree:ec2:stop"]) == ("ValidationError", 400)
assert code_of(cw.put_metric_alarm, AlarmName="bad", Namespace="Lab/App", MetricName="Latency", Statistic="Average",
               Period=45, EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold") == ("InvalidParameterValue", 400)
assert code_of(cw.delete_alarms, AlarmNames=["latency-high", "nope"]) == ("ResourceNotFound", 404)
assert len(cw.describe_alarms()["MetricAlarms"]) == 2, "a refused delete deleted nothing"
cw.delete_alarms(AlarmNames=["manual"])
assert [x["AlarmName"] for x in cw.describe_alarms()["MetricAlarms"]] == ["latency-high"]
check("alarms: put, fire on two minutes above, describe (by name, state, for metric), set state, "
      "actions off and on, history, errors")

# ---- another account sees none of it ----
assert other.list_metrics()["Metrics"] == []
r = other.get_metric_statistics(Namespace="Lab/App", MetricName="Latency", Dimensions=dim,
                                 StartTime=base, EndTime=now, Period=60, Statistics=["Sum"])
assert r["Datapoints"] == [], r
assert other.describe_alarms()["MetricAlarms"] == []
assert other.describe_alarm_history()["AlarmHistoryItems"] == []
assert code_of(other.delete_alarms, AlarmNames=["latency-high"]) == ("ResourceNotFound", 404)
# Its own metric of the same name is its own.
other.put_metric_data(Namespace="Lab/App", MetricData=[{"MetricName": "Latency", "Dimensions": dim, "Value": 1.0,
                                                         "Timestamp": base}])
r = stats(Statistics=["SampleCount"], StartTime=base, EndTime=base + datetime.timedelta(minutes=1))
assert r["Datapoints"][0]["SampleCount"] == 5, r
check("another account sees no metrics, statistics, alarms or history of this one")


# ---- the JSON and Query protocols, signed by hand ----
def signed(body, headers, url=CW):
    req = AWSRequest(method="POST", url=url, data=body, headers=headers)
    SigV4Auth(creds, "monitoring", "gumtree").add_auth(req)
    p = req.prepare()
    r = urllib.request.Request(p.url, data=body.encode() if isinstance(body, str) else body,
                               headers=dict(p.headers), method="POST")
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()


def json_call(op, payload):
    return signed(json.dumps(payload), {"Content-Type": "application/x-amz-json-1.0",
                                        "X-Amz-Target": f"GraniteServiceVersion20100801.{op}"})


status, headers, body = json_call("GetMetricStatistics", {
    "Namespace": "Lab/App", "MetricName": "Latency", "Dimensions": dim,
    "StartTime": base.timestamp(), "EndTime": (base + datetime.timedelta(minutes=1)).timestamp(),
    "Period": 60, "Statistics": ["Sum"]})
assert status == 200 and headers["content-type"] == "application/x-amz-json-1.0", (status, headers)
doc = json.loads(body)
assert doc["Datapoints"][0]["Sum"] == sum(values) and doc["Datapoints"][0]["Timestamp"] == base.timestamp(), doc
status, headers, body = json_call("PutMetricData", {"Namespace": "AWS/Nope", "MetricData": [{"MetricName": "x", "Value": 1}]})
assert status == 400 and json.loads(body)["__type"] == "InvalidParameterValueException", body
assert headers.get("x-amzn-query-error") == "InvalidParameterValue;Sender", headers
check("awsJson1_0: GetMetricStatistics and an error with x-amzn-query-error")

form = urllib.parse.urlencode({
    "Action": "GetMetricStatistics", "Version": "2010-08-01", "Namespace": "Lab/App", "MetricName": "Latency",
    "Dimensions.member.1.Name": "Host", "Dimensions.member.1.Value": "web-1",
    "StartTime": base.isoformat(), "EndTime": (base + datetime.timedelta(minutes=1)).isoformat(),
    "Period": "60", "Statistics.member.1": "Sum"})
status, headers, body = signed(form, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
assert status == 200, body
assert "<GetMetricStatisticsResponse xmlns=\"http://monitoring.amazonaws.com/doc/2010-08-01/\">" in body, body
assert f"<Sum>{sum(values)}</Sum>" in body, body
status, headers, body = signed(form.replace("Period=60", "Period=61"),
                               {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
assert status == 400 and "<Code>InvalidParameterValue</Code>" in body and "<Type>Sender</Type>" in body, body
# A signature for EC2 is not one for CloudWatch.
req = AWSRequest(method="POST", url=CW, data=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
SigV4Auth(creds, "ec2", "gumtree").add_auth(req)
p = req.prepare()
try:
    urllib.request.urlopen(urllib.request.Request(p.url, data=form.encode(), headers=dict(p.headers), method="POST"))
    raise AssertionError("a request signed for ec2 was taken")
except urllib.error.HTTPError as e:
    assert e.code == 403 and b"SignatureDoesNotMatch" in e.read(), e
# SigV2 (euca2ools and boto 2 sign Query requests so): the form signed
# with HmacSHA256 over method, host, path and the sorted parameters.
import base64  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402

u = urllib.parse.urlparse(CW)
v2 = {"Action": "ListMetrics", "Version": "2010-08-01", "Namespace": "Lab/App", "AWSAccessKeyId": creds.access_key,
      "SignatureVersion": "2", "SignatureMethod": "HmacSHA256",
      "Timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
canonical = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                     for k, v in sorted(v2.items()))
to_sign = f"POST\n{u.netloc}\n{u.path}\n{canonical}"
v2["Signature"] = base64.b64encode(hmac.new(creds.secret_key.encode(), to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(CW, data=urllib.parse.urlencode(v2).encode(), method="POST",
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
with urllib.request.urlopen(req) as r:
    listed = r.read().decode()
assert "<MetricName>Latency</MetricName>" in listed and "<ListMetricsResult>" in listed, listed
v2["Signature"] = base64.b64encode(b"x" * 32).decode()
try:
    urllib.request.urlopen(urllib.request.Request(CW, data=urllib.parse.urlencode(v2).encode(), method="POST",
                                                  headers={"Content-Type": "application/x-www-form-urlencoded"}))
    raise AssertionError("a wrong SigV2 signature was taken")
except urllib.error.HTTPError as e:
    assert e.code == 403, e
check("Query: GetMetricStatistics in XML, an error in <ErrorResponse>, signatures scoped to monitoring, SigV2")

# boto 2 (as older scripts and euca2ools' generation use it): the Query
# protocol at the endpoint's path.
import boto.ec2.cloudwatch  # noqa: E402
from boto.regioninfo import RegionInfo  # noqa: E402

u = urllib.parse.urlparse(CW)
b2 = boto.ec2.cloudwatch.CloudWatchConnection(
    aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key, is_secure=False,
    region=RegionInfo(name="gumtree", endpoint=u.hostname), port=u.port, path=u.path)
assert b2.put_metric_data("Lab/Boto2", "Hits", value=[3, 4], unit="Count", dimensions={"Page": "home"})
got = b2.get_metric_statistics(3600, now - datetime.timedelta(minutes=30), now + datetime.timedelta(minutes=30),
                               "Hits", "Lab/Boto2", ["Sum", "SampleCount"], dimensions={"Page": "home"})
assert len(got) == 1 and got[0]["Sum"] == 7.0 and got[0]["SampleCount"] == 2.0, got
assert [m.name for m in b2.list_metrics(namespace="Lab/Boto2")] == ["Hits"]
check("boto 2: put_metric_data, get_metric_statistics, list_metrics")

print("cloudwatch api: all checks passed")
