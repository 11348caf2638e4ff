//! Walrus driven by the clients people use: AWS CLI v1 and v2, boto3 and
//! s3cmd, against the real daemons.

use std::{fs, path::Path};

use tests::{
    clients::{self, AwsCli, Credentials},
    harness::Cloud,
};

/// `len` bytes no compressor or deduplicator would flatter.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).expect("mkdir");
    }
    fs::write(path, data).expect("write");
}

fn same_file(a: &Path, b: &Path) {
    let (x, y) = (fs::read(a).expect("read a"), fs::read(b).expect("read b"));
    assert!(
        x.len() == y.len() && x == y,
        "{} ({} bytes) differs from {} ({} bytes)",
        a.display(),
        x.len(),
        b.display(),
        y.len()
    );
}

/// The whole `aws s3` workflow a user goes through, with one CLI.
fn aws_s3_workflow(which: AwsCli) {
    let cloud = Cloud::start();
    let endpoint = cloud.s3_endpoint();
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join(format!("home-{which:?}"));
    fs::create_dir_all(&home).expect("home");
    let aws = |args: &[&str]| clients::aws(which, &creds, &home, &endpoint, args);
    let bucket = format!("bucket-{}", format!("{which:?}").to_lowercase());
    let url = |key: &str| format!("s3://{bucket}/{key}");

    aws(&["s3", "mb", &format!("s3://{bucket}")]).expect_ok();
    aws(&["s3", "mb", &format!("s3://{bucket}")]).expect_err("BucketAlreadyOwnedByYou");
    let listed = aws(&["s3", "ls"]).expect_ok();
    assert!(listed.contains(&bucket), "ls shows the bucket: {listed}");

    let files = home.join("files");
    let small = files.join("small.txt");
    write(&small, b"hello from the gumtree test suite\n");
    // Above the CLI's 8 MiB threshold: a three-part multipart upload.
    let big = files.join("big.bin");
    write(&big, &noise(20 * 1024 * 1024 + 12345, 7));
    aws(&[
        "s3",
        "cp",
        small.to_str().unwrap_or_default(),
        &url("small.txt"),
    ])
    .expect_ok();
    aws(&[
        "s3",
        "cp",
        big.to_str().unwrap_or_default(),
        &url("big.bin"),
    ])
    .expect_ok();

    let listing = aws(&["s3", "ls", &format!("s3://{bucket}/")]).expect_ok();
    assert!(
        listing.contains(" 34 small.txt") && listing.contains(" 20983865 big.bin"),
        "ls shows both objects with their sizes: {listing}"
    );
    let head = aws(&[
        "s3api",
        "head-object",
        "--bucket",
        &bucket,
        "--key",
        "big.bin",
    ])
    .expect_ok();
    assert!(
        head.contains("-3\\\"") || head.contains("-3\""),
        "a multipart ETag ends in -<parts>: {head}"
    );

    let down = home.join("down");
    fs::create_dir_all(&down).expect("down");
    aws(&[
        "s3",
        "cp",
        &url("small.txt"),
        down.join("small.txt").to_str().unwrap_or_default(),
    ])
    .expect_ok();
    aws(&[
        "s3",
        "cp",
        &url("big.bin"),
        down.join("big.bin").to_str().unwrap_or_default(),
    ])
    .expect_ok();
    same_file(&small, &down.join("small.txt"));
    same_file(&big, &down.join("big.bin"));

    // sync uploads what is missing, and only that.
    let tree = home.join("tree");
    write(&tree.join("a.txt"), b"a");
    write(&tree.join("sub/b.txt"), b"bb");
    write(&tree.join("sub/deeper/c.txt"), b"ccc");
    let tree_arg = tree.to_str().unwrap_or_default();
    let synced = aws(&["s3", "sync", tree_arg, &url("tree/")]).expect_ok();
    assert_eq!(synced.matches("upload:").count(), 3, "{synced}");
    let again = aws(&["s3", "sync", tree_arg, &url("tree/")]).expect_ok();
    assert_eq!(
        again.matches("upload:").count(),
        0,
        "nothing to sync: {again}"
    );
    let recursive = aws(&["s3", "ls", "--recursive", &url("tree/")]).expect_ok();
    for key in ["tree/a.txt", "tree/sub/b.txt", "tree/sub/deeper/c.txt"] {
        assert!(recursive.contains(key), "{key} in {recursive}");
    }
    let top = aws(&["s3", "ls", &url("tree/")]).expect_ok();
    assert!(
        top.contains("PRE sub/") && top.contains("a.txt") && !top.contains("b.txt"),
        "a delimited listing shows common prefixes: {top}"
    );
    let back = home.join("back");
    aws(&[
        "s3",
        "sync",
        &url("tree/"),
        back.to_str().unwrap_or_default(),
    ])
    .expect_ok();
    same_file(
        &tree.join("sub/deeper/c.txt"),
        &back.join("sub/deeper/c.txt"),
    );

    // A presigned URL works for anyone holding it, and only as signed.
    let presigned = aws(&["s3", "presign", &url("small.txt"), "--expires-in", "300"]).expect_ok();
    let presigned = presigned.trim();
    let fetched = http_get(presigned);
    assert_eq!(fetched.0, 200, "presigned GET: {}", fetched.1);
    assert_eq!(fetched.1, "hello from the gumtree test suite\n");
    let tampered = presigned.replace("small.txt", "big.bin");
    let refused = http_get(&tampered);
    assert_eq!(refused.0, 403, "a tampered URL is refused: {}", refused.1);
    assert!(
        refused.1.contains("<Code>SignatureDoesNotMatch</Code>"),
        "{}",
        refused.1
    );
    let anonymous = http_get(&format!("{endpoint}/{bucket}/small.txt"));
    assert_eq!(anonymous.0, 403, "private objects refuse anonymous reads");

    // ListObjectVersions: every object one version, null and latest, paged
    // by the CLI itself (one key a page); version id null on GET.
    let versions = aws(&[
        "s3api",
        "list-object-versions",
        "--bucket",
        &bucket,
        "--page-size",
        "1",
        "--query",
        "Versions[].[Key,VersionId,IsLatest]",
        "--output",
        "text",
    ])
    .expect_ok();
    let rows: Vec<&str> = versions.lines().collect();
    assert_eq!(rows.len(), 5, "{versions}");
    assert!(
        rows.iter().all(|r| r.ends_with("\tnull\tTrue")),
        "{versions}"
    );
    assert!(
        rows[0].starts_with("big.bin\t") && rows[4].starts_with("tree/sub/deeper/c.txt\t"),
        "{versions}"
    );
    aws(&[
        "s3api",
        "get-object",
        "--bucket",
        &bucket,
        "--key",
        "small.txt",
        "--version-id",
        "null",
        down.join("by-version").to_str().unwrap_or_default(),
    ])
    .expect_ok();
    same_file(&small, &down.join("by-version"));

    aws(&["s3", "rm", &url("small.txt")]).expect_ok();
    aws(&[
        "s3",
        "cp",
        &url("small.txt"),
        down.join("gone").to_str().unwrap_or_default(),
    ])
    .expect_err("404");
    aws(&["s3", "rm", "--recursive", &url("tree/")]).expect_ok();
    aws(&["s3", "rb", &format!("s3://{bucket}")]).expect_err("BucketNotEmpty");
    aws(&["s3", "rb", "--force", &format!("s3://{bucket}")]).expect_ok();
    let listed = aws(&["s3", "ls"]).expect_ok();
    assert!(!listed.contains(&bucket), "the bucket is gone: {listed}");
}

/// A plain HTTP GET: (status, body).
fn http_get(url: &str) -> (u16, String) {
    let script = "import sys, urllib.request, urllib.error\n\
try:\n    r = urllib.request.urlopen(sys.argv[1])\n    print(r.status)\n    sys.stdout.write(r.read().decode())\n\
except urllib.error.HTTPError as e:\n    print(e.code)\n    sys.stdout.write(e.read().decode())\n";
    let out = std::process::Command::new(clients::python())
        .arg("-c")
        .arg(script)
        .arg(url)
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn aws_cli_v1_s3_workflow() {
    aws_s3_workflow(AwsCli::V1);
}

#[test]
fn aws_cli_v2_s3_workflow() {
    aws_s3_workflow(AwsCli::V2);
}

/// Runs tests/clients/s3_boto3.py against `endpoint`.
fn boto3_checks(cloud: &Cloud, endpoint: &str, ca_bundle: Option<&Path>, bucket: &str) {
    let creds = Credentials::new(cloud.admin_key());
    let (other_key, other_secret) = cloud.new_account("other");
    let home = cloud.dir().join(format!("home-{bucket}"));
    fs::create_dir_all(&home).expect("home");
    let ca = ca_bundle
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let run = clients::python_script(
        &creds,
        &home,
        &clients::script("s3_boto3.py"),
        &[
            ("GUMTREE_S3_ENDPOINT", endpoint),
            ("GUMTREE_CA_BUNDLE", &ca),
            ("GUMTREE_BUCKET", bucket),
            ("GUMTREE_OTHER_KEY", &other_key),
            ("GUMTREE_OTHER_SECRET", &other_secret),
        ],
    );
    let out = run.expect_ok();
    eprintln!("{out}");
    assert!(out.contains("boto3: all checks passed"), "{out}");
}

#[test]
fn boto3_over_http() {
    let cloud = Cloud::start();
    boto3_checks(&cloud, &cloud.s3_endpoint(), None, "boto3-http");
}

#[test]
fn s3cmd_put_get_ls_del() {
    let cloud = Cloud::start();
    let endpoint = cloud.s3_endpoint();
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-s3cmd");
    fs::create_dir_all(&home).expect("home");
    let config = clients::s3cmd_config(&creds, &home, &endpoint);
    let s3cmd = |args: &[&str]| clients::s3cmd(&creds, &home, &config, args);
    let file = home.join("note.txt");
    write(&file, b"s3cmd was here\n");
    // Over s3cmd's 15 MiB chunk size: a multipart upload.
    let big = home.join("big.bin");
    write(&big, &noise(17 * 1024 * 1024, 3));

    s3cmd(&["mb", "s3://s3cmd-bucket"]).expect_ok();
    s3cmd(&[
        "put",
        file.to_str().unwrap_or_default(),
        "s3://s3cmd-bucket/notes/note.txt",
    ])
    .expect_ok();
    s3cmd(&[
        "put",
        big.to_str().unwrap_or_default(),
        "s3://s3cmd-bucket/big.bin",
    ])
    .expect_ok();
    let ls = s3cmd(&["ls", "s3://s3cmd-bucket/"]).expect_ok();
    assert!(
        ls.contains("DIR") && ls.contains("s3://s3cmd-bucket/notes/") && ls.contains("big.bin"),
        "{ls}"
    );
    let la = s3cmd(&["ls", "--recursive", "s3://s3cmd-bucket"]).expect_ok();
    assert!(la.contains("s3://s3cmd-bucket/notes/note.txt"), "{la}");
    let buckets = s3cmd(&["ls"]).expect_ok();
    assert!(buckets.contains("s3://s3cmd-bucket"), "{buckets}");

    let back = home.join("back.txt");
    s3cmd(&[
        "get",
        "s3://s3cmd-bucket/notes/note.txt",
        back.to_str().unwrap_or_default(),
    ])
    .expect_ok();
    same_file(&file, &back);
    let big_back = home.join("big.back");
    s3cmd(&[
        "get",
        "s3://s3cmd-bucket/big.bin",
        big_back.to_str().unwrap_or_default(),
    ])
    .expect_ok();
    same_file(&big, &big_back);
    let info = s3cmd(&["info", "s3://s3cmd-bucket/notes/note.txt"]).expect_ok();
    assert!(info.contains("15"), "info shows the size: {info}");

    // Public access as s3cmd toggles it: it PUTs an ACL document.
    s3cmd(&["setacl", "--acl-public", "s3://s3cmd-bucket/notes/note.txt"]).expect_ok();
    let public = http_get(&format!("{endpoint}/s3cmd-bucket/notes/note.txt"));
    assert_eq!(public, (200, "s3cmd was here\n".to_string()));
    s3cmd(&[
        "setacl",
        "--acl-private",
        "s3://s3cmd-bucket/notes/note.txt",
    ])
    .expect_ok();
    assert_eq!(
        http_get(&format!("{endpoint}/s3cmd-bucket/notes/note.txt")).0,
        403
    );

    s3cmd(&["del", "s3://s3cmd-bucket/notes/note.txt"]).expect_ok();
    s3cmd(&["del", "s3://s3cmd-bucket/big.bin"]).expect_ok();
    let empty = s3cmd(&["ls", "--recursive", "s3://s3cmd-bucket"]).expect_ok();
    assert!(empty.trim().is_empty(), "{empty}");
    s3cmd(&["rb", "s3://s3cmd-bucket"]).expect_ok();
    let gone = s3cmd(&["ls", "s3://s3cmd-bucket"]);
    gone.expect_err("NoSuchBucket");
}

#[test]
fn signature_v2_from_boto2_botocore_and_s3cmd() {
    let cloud = Cloud::start();
    let endpoint = cloud.s3_endpoint();
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-sigv2");
    fs::create_dir_all(&home).expect("home");
    let run = clients::python_script(
        &creds,
        &home,
        &clients::script("s3_sigv2.py"),
        &[("GUMTREE_S3_ENDPOINT", &endpoint)],
    );
    let out = run.expect_ok();
    assert!(out.contains("sigv2: all checks passed"), "{out}");

    // s3cmd signing V2, and its V2 presigned URLs.
    let config = clients::s3cmd_config(&creds, &home, &endpoint);
    let text = fs::read_to_string(&config).expect("read s3cfg");
    fs::write(
        &config,
        text.replace("signature_v2 = False", "signature_v2 = True"),
    )
    .expect("write s3cfg");
    let s3cmd = |args: &[&str]| clients::s3cmd(&creds, &home, &config, args);
    let file = home.join("v2.txt");
    write(&file, b"signed the old way\n");
    s3cmd(&["mb", "s3://s3cmd-v2"]).expect_ok();
    s3cmd(&[
        "put",
        file.to_str().unwrap_or_default(),
        "s3://s3cmd-v2/v2.txt",
    ])
    .expect_ok();
    let ls = s3cmd(&["ls", "s3://s3cmd-v2"]).expect_ok();
    assert!(ls.contains("s3://s3cmd-v2/v2.txt"), "{ls}");
    let url = s3cmd(&["signurl", "s3://s3cmd-v2/v2.txt", "+300"]).expect_ok();
    assert!(url.contains("Signature="), "{url}");
    assert_eq!(
        http_get(url.trim()),
        (200, "signed the old way\n".to_string())
    );
    s3cmd(&["del", "s3://s3cmd-v2/v2.txt"]).expect_ok();
    s3cmd(&["rb", "s3://s3cmd-v2"]).expect_ok();
}

#[test]
fn boto3_over_https() {
    let cloud = Cloud::start_with(tests::harness::CloudOptions {
        s3_tls: true,
        ..Default::default()
    });
    let endpoint = cloud.s3_https_endpoint();
    boto3_checks(&cloud, &endpoint, Some(&cloud.ca_file()), "boto3-https");
    // Over https boto3 sends its CRC32 as an aws-chunked trailer: check that
    // the daemon took that path (and not a plain body).
    let log = cloud.log("walrus");
    let trailed = log
        .lines()
        .filter(|l| l.contains("object stored") && l.contains("body=\"aws-chunked+trailer\""))
        .count();
    assert!(
        trailed > 0 && log.contains("checksums=[\"CRC32\"]"),
        "boto3 over https sent CRC32 trailers:\n{log}"
    );
    // The AWS CLI over https, with the certificate as its CA bundle.
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-https-cli");
    fs::create_dir_all(&home).expect("home");
    let file = home.join("f.txt");
    write(&file, b"over TLS\n");
    let ca = cloud.ca_file();
    let ca = ca.to_str().unwrap_or_default();
    for which in [AwsCli::V1, AwsCli::V2] {
        let aws = |args: &[&str]| {
            let mut all = vec!["--ca-bundle", ca];
            all.extend_from_slice(args);
            clients::aws(which, &creds, &home, &endpoint, &all)
        };
        let bucket = format!("tls-{}", format!("{which:?}").to_lowercase());
        aws(&["s3", "mb", &format!("s3://{bucket}")]).expect_ok();
        aws(&[
            "s3",
            "cp",
            file.to_str().unwrap_or_default(),
            &format!("s3://{bucket}/f.txt"),
        ])
        .expect_ok();
        let got = aws(&["s3", "cp", &format!("s3://{bucket}/f.txt"), "-"]).expect_ok();
        assert_eq!(got, "over TLS\n");
        aws(&["s3", "rb", "--force", &format!("s3://{bucket}")]).expect_ok();
    }
}

#[test]
fn sigkill_during_uploads_loses_no_acknowledged_object() {
    use std::io::{BufRead, BufReader};
    let mut cloud = Cloud::start();
    let endpoint = cloud.s3_endpoint();
    let creds = Credentials::new(cloud.admin_key());
    let home = cloud.dir().join("home-durability");
    fs::create_dir_all(&home).expect("home");
    let script = clients::script("s3_durability.py");
    let mut cmd = creds.command(&clients::python(), &home);
    cmd.arg(&script)
        .arg("upload")
        .env("GUMTREE_S3_ENDPOINT", &endpoint)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("start the uploader");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    // Let it get going, then kill Walrus in the middle of whatever it does.
    for line in lines.by_ref() {
        let line = line.expect("read");
        if line.starts_with("acked ") {
            acked.push(line);
            if acked.len() == 40 {
                cloud.kill("walrus");
                break;
            }
        }
    }
    for line in lines {
        let line = line.expect("read");
        if line.starts_with("acked ") {
            acked.push(line);
        }
    }
    let _ = child.wait();
    let list = home.join("acked.txt");
    fs::write(&list, acked.join("\n") + "\n").expect("write list");
    cloud.restart("walrus");
    let mut cmd = creds.command(&clients::python(), &home);
    cmd.arg(&script)
        .arg("verify")
        .arg(&list)
        .env("GUMTREE_S3_ENDPOINT", &endpoint);
    let out = cmd.output().expect("verify");
    assert!(
        out.status.success(),
        "acknowledged objects are all there after SIGKILL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And nothing half-written lingers: no temporary files, no data file
    // that no object names.
    let objects = cloud.dir().join("walrus").join("objects");
    let tmp = fs::read_dir(objects.join("tmp")).expect("tmp").count();
    assert_eq!(tmp, 0, "temporary files are cleared at start");
    let data = fs::read_dir(objects.join("data")).expect("data").count();
    assert!(
        data >= acked.len() && data <= acked.len() + 1,
        "{data} data files for {} acknowledged objects (one more may have been stored but not acknowledged)",
        acked.len()
    );
}
