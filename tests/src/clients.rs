//! The real clients users drive the cloud with: AWS CLI v1 (PyPI) and v2
//! (Debian), boto3 and boto 2 (Python), s3cmd. `scripts/test` installs them
//! and names them in `GUMTREE_AWS_V1`, `GUMTREE_AWS_V2`, `GUMTREE_PYTHON` and
//! `GUMTREE_S3CMD`; without those the usual places are tried. A missing
//! client fails the test: nothing is skipped silently.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

/// Which AWS CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsCli {
    /// AWS CLI v1, from PyPI.
    V1,
    /// AWS CLI v2, from Debian.
    V2,
}

fn venv() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    cache.join("gumtree/venv")
}

fn program(var: &str, fallback: PathBuf) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(fallback);
    assert!(
        path.exists(),
        "{} is missing: run the suite with scripts/test, which installs the clients (or set {var})",
        path.display()
    );
    path
}

/// The AWS CLI binary.
pub fn aws_binary(which: AwsCli) -> PathBuf {
    match which {
        AwsCli::V1 => program("GUMTREE_AWS_V1", venv().join("bin/aws")),
        AwsCli::V2 => program("GUMTREE_AWS_V2", PathBuf::from("/usr/bin/aws")),
    }
}

/// The Python that has boto3 and boto.
pub fn python() -> PathBuf {
    program("GUMTREE_PYTHON", venv().join("bin/python"))
}

/// s3cmd.
pub fn s3cmd_binary() -> PathBuf {
    program("GUMTREE_S3CMD", venv().join("bin/s3cmd"))
}

/// Credentials and where to send them.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

impl Credentials {
    /// `(id, secret)` as the harness returns keys, in region `gumtree`.
    pub fn new(key: (String, String)) -> Self {
        Self {
            access_key: key.0,
            secret_key: key.1,
            region: "gumtree".into(),
        }
    }

    /// A command with only these credentials in its environment: no user
    /// config file, no instance metadata lookups, a private HOME.
    pub fn command(&self, program: &Path, home: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("LANG", "C.UTF-8")
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_DEFAULT_REGION", &self.region)
            .env("AWS_CONFIG_FILE", home.join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                home.join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "")
            .stdin(Stdio::null());
        cmd
    }
}

/// Output of a client run, with what a failure message needs.
#[derive(Debug)]
pub struct Run {
    pub what: String,
    pub output: Output,
}

impl Run {
    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// True on exit status 0.
    pub fn ok(&self) -> bool {
        self.output.status.success()
    }

    /// Panics unless it succeeded; returns stdout.
    #[track_caller]
    pub fn expect_ok(&self) -> String {
        assert!(
            self.ok(),
            "{} failed ({}):\nstdout: {}\nstderr: {}",
            self.what,
            self.output.status,
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    /// Panics unless it failed with `needle` in its stderr; returns stderr.
    #[track_caller]
    pub fn expect_err(&self, needle: &str) -> String {
        let err = self.stderr();
        assert!(
            !self.ok() && err.contains(needle),
            "{} should fail with {needle:?} ({}):\nstdout: {}\nstderr: {err}",
            self.what,
            self.output.status,
            self.stdout()
        );
        err
    }
}

pub fn run(what: String, mut cmd: Command) -> Run {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    Run { what, output }
}

/// `aws --endpoint-url ENDPOINT ARGS` as `creds`, with HOME `home`.
pub fn aws(which: AwsCli, creds: &Credentials, home: &Path, endpoint: &str, args: &[&str]) -> Run {
    let mut cmd = creds.command(&aws_binary(which), home);
    cmd.arg("--endpoint-url").arg(endpoint).args(args);
    run(format!("aws {which:?} {}", args.join(" ")), cmd)
}

/// Runs a Python script with `args` as `creds`; the script reads the
/// endpoint from `GUMTREE_S3_ENDPOINT` and anything else from `env`.
pub fn python_script(creds: &Credentials, home: &Path, script: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = creds.command(&python(), home);
    cmd.arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(format!("python {}", script.display()), cmd)
}

/// Writes an s3cmd config for `endpoint` (`http://host:port`) into `home`
/// and returns its path.
pub fn s3cmd_config(creds: &Credentials, home: &Path, endpoint: &str) -> PathBuf {
    let host = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let https = endpoint.starts_with("https://");
    let path = home.join("s3cfg");
    std::fs::write(
        &path,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {host}\nhost_bucket = {host}\n\
             bucket_location = {}\nuse_https = {}\nsignature_v2 = False\ncheck_ssl_certificate = False\n\
             progress_meter = False\n",
            creds.access_key,
            creds.secret_key,
            creds.region,
            if https { "True" } else { "False" },
        ),
    )
    .expect("write s3cfg");
    path
}

/// `s3cmd -c CONFIG ARGS`.
pub fn s3cmd(creds: &Credentials, home: &Path, config: &Path, args: &[&str]) -> Run {
    let mut cmd = creds.command(&s3cmd_binary(), home);
    cmd.arg("-c").arg(config).args(args);
    run(format!("s3cmd {}", args.join(" ")), cmd)
}

/// Path of a file under `tests/clients/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("clients")
        .join(name)
}

/// The tiny guest (kernel `vmlinuz`, ramdisk `initrd.gz`, disk `disk.img`):
/// `GUMTREE_TINY_GUEST`, which `scripts/test` builds, or built now into the
/// cache with `scripts/build-tiny-guest`.
pub fn tiny_guest() -> PathBuf {
    let dir = std::env::var_os("GUMTREE_TINY_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| venv().with_file_name("tiny-guest"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-tiny-guest");
    let out = Command::new(&script)
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "building the tiny guest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// Uploads the tiny guest (from `tiny`) to the bucket `tiny` of Walrus and
/// registers its kernel, ramdisk and instance-store image as users do,
/// with the AWS CLI that `aws` runs (endpoint first); answers (aki, ari,
/// ami).
pub fn register_tiny(
    tiny: &std::path::Path,
    aws: &dyn Fn(&str, &[&str]) -> Run,
    s3: &str,
    ec2: &str,
) -> (String, String, String) {
    aws(s3, &["s3", "mb", "s3://tiny"]).expect_ok();
    for (file, kind) in [
        ("vmlinuz", "kernel"),
        ("initrd.gz", "ramdisk"),
        ("disk.img", ""),
    ] {
        let mut args = vec![
            "s3".to_string(),
            "cp".to_string(),
            tiny.join(file).display().to_string(),
            format!("s3://tiny/{file}"),
        ];
        if !kind.is_empty() {
            args.push("--metadata".into());
            args.push(format!("image-type={kind}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        aws(s3, &args).expect_ok();
    }
    let register = |location: &str, name: &str, extra: &[&str]| -> String {
        let mut args = vec![
            "ec2",
            "register-image",
            "--image-location",
            location,
            "--name",
            name,
            "--query",
            "ImageId",
            "--output",
            "text",
        ];
        args.extend(extra);
        aws(ec2, &args).expect_ok().trim().to_string()
    };
    let aki = register("tiny/vmlinuz", "tiny-kernel", &[]);
    let ari = register("tiny/initrd.gz", "tiny-ramdisk", &[]);
    let ami = register(
        "tiny/disk.img",
        "tiny",
        &["--kernel-id", &aki, "--ramdisk-id", &ari],
    );
    (aki, ari, ami)
}

/// Registers the object at `location` (`bucket/key`) as image `name` with
/// the AWS CLI that `ec2` runs: its id.
pub fn register_image(ec2: &dyn Fn(&[&str]) -> Run, location: &str, name: &str) -> String {
    ec2(&[
        "ec2",
        "register-image",
        "--image-location",
        location,
        "--name",
        name,
        "--query",
        "ImageId",
        "--output",
        "text",
    ])
    .expect_ok()
    .trim()
    .to_string()
}

/// Launches one instance of `ami` with the AWS CLI that `ec2` runs: its id.
pub fn launch_one(ec2: &dyn Fn(&[&str]) -> Run, ami: &str) -> String {
    launch_one_with(ec2, ami, &[])
}

/// Launches one instance of `ami` with more `run-instances` arguments
/// (`--user-data ...`, say): its id.
pub fn launch_one_with(ec2: &dyn Fn(&[&str]) -> Run, ami: &str, more: &[&str]) -> String {
    let mut args = vec![
        "ec2",
        "run-instances",
        "--image-id",
        ami,
        "--query",
        "Instances[0].InstanceId",
        "--output",
        "text",
    ];
    args.extend(more);
    ec2(&args).expect_ok().trim().to_string()
}

/// The state name of instance `id`, as the AWS CLI that `ec2` runs shows it.
pub fn instance_state(ec2: &dyn Fn(&[&str]) -> Run, id: &str) -> String {
    let out = ec2(&["ec2", "describe-instances", "--instance-ids", id]).expect_ok();
    let d: serde_json::Value = serde_json::from_str(&out).expect("json");
    d["Reservations"][0]["Instances"][0]["State"]["Name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `statistic` of CloudWatch's `metric` in `namespace` with one dimension
/// over the last two hours, summed over its datapoints (0 when there are
/// none or the call failed), with the AWS CLI that `aws` runs against a
/// CloudWatch endpoint.
pub fn cloudwatch_total(
    aws: &dyn Fn(&[&str]) -> Run,
    namespace: &str,
    metric: &str,
    (name, value): (&str, &str),
    statistic: &str,
) -> f64 {
    let now = common::time::unix_secs();
    let out = aws(&[
        "cloudwatch",
        "get-metric-statistics",
        "--namespace",
        namespace,
        "--metric-name",
        metric,
        "--dimensions",
        &format!("Name={name},Value={value}"),
        "--start-time",
        &common::time::iso8601_ms((now - 7200) * 1000),
        "--end-time",
        &common::time::iso8601_ms((now + 3600) * 1000),
        "--period",
        "10800",
        "--statistics",
        statistic,
        "--output",
        "json",
    ]);
    serde_json::from_str::<serde_json::Value>(&out.stdout())
        .ok()
        .and_then(|v| {
            v["Datapoints"]
                .as_array()
                .map(|d| d.iter().filter_map(|p| p[statistic].as_f64()).sum())
        })
        .unwrap_or(0.0)
}
