//! Walrus's internal gRPC service: how NCs fetch images and the SC stores
//! snapshots. Callers are the cloud's own components (mutual TLS and the
//! cluster secret, checked by the server's guard, which also limits each
//! role to its methods), so bucket ACLs do not apply here; a node gets
//! only the images its instances use.

use std::{collections::BTreeMap, io::Read, sync::Arc};

use common::{auth::caller, pki::Role, time};
use proto::{walrus_internal_server::WalrusInternal, ObjectChunk, ObjectInfo, ObjectRef};
use sha2::{Digest, Sha256};
use tokio::{io::AsyncReadExt, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    identity::Identity,
    objects::{Object, ObjectError, ObjectStore},
};

/// Bytes per streamed chunk.
const CHUNK: usize = 1024 * 1024;

/// Walrus's internal service.
#[derive(Clone, Debug)]
pub struct Internal {
    objects: ObjectStore,
    identity: Arc<Identity>,
}

impl Internal {
    /// The service over `objects`; `identity` asks the CLC what nodes may read.
    pub fn new(objects: ObjectStore, identity: Arc<Identity>) -> Self {
        Self { objects, identity }
    }

    /// A node reads only what an instance on it uses; other callers' roles
    /// were checked by the guard.
    async fn may_read<T>(&self, request: &Request<T>, r: &ObjectRef) -> Result<(), Status> {
        let who = caller(request)?;
        if who.role != Role::Nc {
            return Ok(());
        }
        let allowed = self
            .identity
            .node_may_read(&who.name, &r.bucket, &r.key)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if allowed {
            Ok(())
        } else {
            tracing::warn!(node = %who.name, bucket = %r.bucket, key = %r.key, "refused a node an object no instance of it uses");
            Err(Status::permission_denied(format!(
                "node {} runs no instance of {}/{}",
                who.name, r.bucket, r.key
            )))
        }
    }

    fn object(&self, r: &ObjectRef) -> Result<Object, Status> {
        self.objects
            .object(&r.bucket, &r.key)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no object {}/{}", r.bucket, r.key)))
    }

    /// The object's SHA-256, computed once and kept in its record.
    async fn sha256_of(&self, object: &Object) -> Result<String, Status> {
        if let Some(s) = &object.sha256 {
            return Ok(s.clone());
        }
        let file = self
            .objects
            .open_data(object)
            .await
            .map_err(internal)?
            .into_std()
            .await;
        let digest = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut file = file;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(hex::encode(hasher.finalize()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| internal(e.into()))?;
        let updated = Object {
            sha256: Some(digest.clone()),
            ..object.clone()
        };
        // If the object changed meanwhile, its new record keeps no digest.
        let _ = self.objects.update_object(object, &updated);
        Ok(digest)
    }
}

fn internal(e: ObjectError) -> Status {
    tracing::error!(error = %e, "internal object call failed");
    Status::internal(e.to_string())
}

fn info(o: &Object, sha256: String) -> ObjectInfo {
    ObjectInfo {
        bucket: o.bucket.clone(),
        key: o.key.clone(),
        size: o.size,
        etag: o.etag.clone(),
        sha256,
        owner_id: o.owner_id.clone(),
        acl: o.acl.clone(),
        metadata: o.user_metadata.clone().into_iter().collect(),
    }
}

#[tonic::async_trait]
impl WalrusInternal for Internal {
    type GetObjectStream = ReceiverStream<Result<ObjectChunk, Status>>;

    async fn get_object(
        &self,
        request: Request<ObjectRef>,
    ) -> Result<Response<Self::GetObjectStream>, Status> {
        self.may_read(&request, request.get_ref()).await?;
        let object = self.object(request.get_ref())?;
        let mut file = self.objects.open_data(&object).await.map_err(internal)?;
        let (tx, rx) = mpsc::channel(4);
        tracing::info!(bucket = %object.bucket, key = %object.key, size = object.size, "internal download");
        tokio::spawn(async move {
            let mut hasher = Sha256::new();
            let mut sent = 0u64;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                buf.truncate(n);
                hasher.update(&buf);
                sent += n as u64;
                let last = n == 0;
                let chunk = ObjectChunk {
                    object: None,
                    data: buf,
                    sha256: if last {
                        hex::encode(hasher.clone().finalize())
                    } else {
                        String::new()
                    },
                };
                if tx.send(Ok(chunk)).await.is_err() || last {
                    if last && sent != object.size {
                        tracing::error!(bucket = %object.bucket, key = %object.key, sent, size = object.size, "object data is not the size its record says");
                    }
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn head_object(
        &self,
        request: Request<ObjectRef>,
    ) -> Result<Response<ObjectInfo>, Status> {
        self.may_read(&request, request.get_ref()).await?;
        let object = self.object(request.get_ref())?;
        let sha256 = self.sha256_of(&object).await?;
        Ok(Response::new(info(&object, sha256)))
    }

    async fn put_object(
        &self,
        request: Request<Streaming<ObjectChunk>>,
    ) -> Result<Response<ObjectInfo>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty PutObject stream"))?;
        let target = first
            .object
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first chunk must name the object"))?;
        let bucket = self
            .objects
            .bucket(&target.bucket)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no bucket {}", target.bucket)))?;
        let mut upload = self.objects.begin(true, &[]).await.map_err(internal)?;
        let mut declared = first.sha256.clone();
        let mut chunk = Some(first);
        let streamed: Result<(), Status> = async {
            while let Some(c) = chunk.take() {
                upload
                    .write(&c.data)
                    .await
                    .map_err(|e| internal(e.into()))?;
                if !c.sha256.is_empty() {
                    declared = c.sha256.clone();
                }
                chunk = stream.message().await?;
            }
            Ok(())
        }
        .await;
        let written = upload.finish().await.map_err(|e| internal(e.into()))?;
        let actual = written.sha256_hex.clone().unwrap_or_default();
        if let Err(e) = streamed {
            written.discard().await;
            return Err(e);
        }
        if !declared.is_empty() && !declared.eq_ignore_ascii_case(&actual) {
            written.discard().await;
            return Err(Status::data_loss(format!(
                "sha256 {actual} of what arrived is not the declared {declared}"
            )));
        }
        let object = Object {
            bucket: bucket.name.clone(),
            key: target.key.clone(),
            size: written.size,
            etag: written.md5_hex.clone(),
            last_modified_ms: time::unix_ms(),
            owner_id: bucket.owner_id.clone(),
            owner_name: bucket.owner_name.clone(),
            headers: BTreeMap::new(),
            user_metadata: BTreeMap::new(),
            checksums: BTreeMap::new(),
            acl: "private".into(),
            data: String::new(),
            sha256: Some(actual.clone()),
        };
        let object = self
            .objects
            .commit(object, written)
            .await
            .map_err(internal)?;
        tracing::info!(bucket = %object.bucket, key = %object.key, size = object.size, "internal upload stored");
        Ok(Response::new(info(&object, actual)))
    }

    async fn list_buckets(
        &self,
        request: Request<proto::BucketOwner>,
    ) -> Result<Response<proto::BucketNames>, Status> {
        let owner = request.into_inner().owner_id;
        let names = self
            .objects
            .buckets()
            .map_err(|e| Status::unavailable(format!("cannot list buckets: {e}")))?
            .into_iter()
            .filter(|b| b.owner_id == owner)
            .map(|b| b.name)
            .collect();
        Ok(Response::new(proto::BucketNames { names }))
    }

    async fn delete_buckets(
        &self,
        request: Request<proto::BucketOwner>,
    ) -> Result<Response<proto::BucketNames>, Status> {
        let owner = request.into_inner().owner_id;
        if owner.is_empty() {
            return Err(Status::invalid_argument("no owner"));
        }
        let buckets: Vec<String> = self
            .objects
            .buckets()
            .map_err(internal)?
            .into_iter()
            .filter(|b| b.owner_id == owner)
            .map(|b| b.name)
            .collect();
        for bucket in &buckets {
            for upload in self.objects.uploads(bucket).map_err(internal)? {
                self.objects
                    .abort_upload(bucket, &upload.upload_id)
                    .await
                    .map_err(internal)?;
            }
            loop {
                let (objects, _) = self.objects.list(bucket, "", "", 1000).map_err(internal)?;
                if objects.is_empty() {
                    break;
                }
                for object in objects {
                    self.objects
                        .delete_object(bucket, &object.key)
                        .await
                        .map_err(internal)?;
                }
            }
            self.objects.delete_bucket(bucket).await.map_err(internal)?;
            tracing::info!(%bucket, %owner, "bucket deleted with everything in it (account purge)");
        }
        Ok(Response::new(proto::BucketNames { names: buckets }))
    }

    async fn ensure_system_bucket(
        &self,
        request: Request<proto::ObjectRef>,
    ) -> Result<Response<proto::ObjectRef>, Status> {
        let r = request.into_inner();
        if !r.bucket.starts_with(SYSTEM_PREFIX) {
            return Err(Status::invalid_argument(format!(
                "system buckets are named {SYSTEM_PREFIX}*"
            )));
        }
        match self.objects.bucket(&r.bucket).map_err(internal)? {
            Some(b) if b.owner_id == SYSTEM_OWNER => {}
            Some(_) => {
                return Err(Status::already_exists(format!(
                    "bucket {} belongs to an account",
                    r.bucket
                )))
            }
            None => {
                self.objects
                    .create_bucket(&crate::objects::Bucket {
                        name: r.bucket.clone(),
                        owner_id: SYSTEM_OWNER.into(),
                        owner_name: SYSTEM_OWNER.into(),
                        created_ms: time::unix_ms(),
                        location: String::new(),
                        acl: "private".into(),
                    })
                    .map_err(internal)?;
                tracing::info!(bucket = %r.bucket, "system bucket made");
            }
        }
        Ok(Response::new(r))
    }

    async fn delete_system_object(
        &self,
        request: Request<proto::ObjectRef>,
    ) -> Result<Response<proto::ObjectRef>, Status> {
        let r = request.into_inner();
        match self.objects.bucket(&r.bucket).map_err(internal)? {
            Some(b) if b.owner_id == SYSTEM_OWNER => {}
            _ => {
                return Err(Status::permission_denied(format!(
                    "{} is no system bucket",
                    r.bucket
                )))
            }
        }
        self.objects
            .delete_object(&r.bucket, &r.key)
            .await
            .map_err(internal)?;
        Ok(Response::new(r))
    }
}

/// System buckets (snapshots) are named so: a name S3 refuses, so no
/// account can make or reach one.
pub const SYSTEM_PREFIX: &str = "gumtree_";
/// The owner of system buckets: no account's id.
pub const SYSTEM_OWNER: &str = "gumtree-system";
