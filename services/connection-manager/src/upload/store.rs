//! Where uploaded files live: one directory shared by every
//! connection-manager (`upload.storage` = a path), or a bucket of an
//! S3-compatible object store (`upload.storage` = `s3://BUCKET/PREFIX`).
//!
//! Either way a PUT is staged first, where no GET sees it (a temporary file;
//! a multipart upload not yet completed), and made visible in one step
//! (a rename; the multipart completion) only after its slot was marked used
//! in storage, so a GET never reads half a file. Files are named by their
//! random slot id only: a client's file name never reaches the store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, PutPayloadMut};
use rand::RngCore;
use starling_api::upload::to_hex;
use tokio::io::AsyncWriteExt;

use super::outcome::{PutOutcome, UploadMetrics};

/// An S3-compatible bucket (`upload.storage = "s3://…"`, `upload.s3_*`).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// The key prefix of the files (`PREFIX/files/ID`); may be empty.
    pub prefix: String,
    /// `http(s)://HOST[:PORT]` of an S3-compatible service; empty: AWS.
    pub endpoint: String,
    /// Empty: `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: String,
    /// Allow a plain-HTTP endpoint (a test server on loopback).
    pub allow_http: bool,
    /// Empty: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or the
    /// instance's role).
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl fmt::Debug for S3Settings {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// Where the files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileStoreSettings {
    /// A directory: `files/` and `tmp/` in it.
    Directory(PathBuf),
    /// A bucket: objects `PREFIX/files/ID`.
    S3(S3Settings),
}

/// The file store of the HTTP side.
#[derive(Clone)]
pub enum FileStore {
    Directory(PathBuf),
    Objects {
        store: Arc<dyn ObjectStore>,
        /// `PREFIX/files`.
        files: ObjectPath,
    },
}

/// A PUT's body, stored where no GET sees it yet.
pub enum Staged {
    File {
        temporary: PathBuf,
        destination: PathBuf,
    },
    Multipart(Box<dyn MultipartUpload>),
}

/// A stored file: its length and its bytes.
pub struct Opened {
    pub length: u64,
    pub body: Body,
}

/// What one sweep found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub expired: u64,
    pub stored_files: u64,
    pub stored_bytes: u64,
}

/// The smallest part of an S3 multipart upload but the last (5 MiB), and
/// the most parts one may have (10000): parts are at least this big and
/// big enough for the largest slot in 10000 of them.
const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;

fn part_bytes(size: u64) -> u64 {
    MIN_PART_BYTES.max(size.div_ceil(MAX_PARTS))
}

impl FileStore {
    /// The store of `settings`: the directory with its `files/` and `tmp/`
    /// created, or the S3 client (no request made yet).
    pub fn open(settings: &FileStoreSettings) -> Result<FileStore, String> {
        match settings {
            FileStoreSettings::Directory(directory) => {
                for child in ["files", "tmp"] {
                    std::fs::create_dir_all(directory.join(child)).map_err(|error| {
                        format!(
                            "cannot create the upload directory {}: {error}",
                            directory.join(child).display()
                        )
                    })?;
                }
                Ok(FileStore::Directory(directory.clone()))
            }
            FileStoreSettings::S3(s3) => {
                // AWS_* from the environment first, then the configured keys.
                let mut builder =
                    object_store::aws::AmazonS3Builder::from_env().with_bucket_name(&s3.bucket);
                if s3.allow_http {
                    builder = builder.with_allow_http(true);
                }
                if !s3.endpoint.is_empty() {
                    builder = builder.with_endpoint(&s3.endpoint);
                }
                if !s3.region.is_empty() {
                    builder = builder.with_region(&s3.region);
                }
                if !s3.access_key_id.is_empty() {
                    builder = builder
                        .with_access_key_id(&s3.access_key_id)
                        .with_secret_access_key(&s3.secret_access_key);
                }
                let store = builder
                    .build()
                    .map_err(|error| format!("cannot set up the S3 client: {error}"))?;
                Ok(FileStore::over(Arc::new(store), &s3.prefix))
            }
        }
    }

    /// Files in `store` under `prefix` (any object store: S3, or memory in tests).
    pub fn over(store: Arc<dyn ObjectStore>, prefix: &str) -> FileStore {
        FileStore::Objects {
            store,
            files: ObjectPath::from(prefix).child("files"),
        }
    }

    /// The path of a finished file, by the first two digits of its id.
    fn file_path(directory: &Path, id: &str) -> PathBuf {
        directory.join("files").join(&id[..2]).join(id)
    }

    /// Stream `body` into the store, never more than `size` bytes (a larger
    /// body stops at the first chunk past it: nothing beyond is read or
    /// buffered), staged where no GET sees it. Nothing is left behind when
    /// it fails.
    pub async fn receive(
        &self,
        id: &str,
        body: Body,
        size: u64,
        metrics: &UploadMetrics,
    ) -> Result<Staged, PutOutcome> {
        match self {
            FileStore::Directory(directory) => {
                let mut suffix = [0u8; 8];
                rand::thread_rng().fill_bytes(&mut suffix);
                let temporary = directory
                    .join("tmp")
                    .join(format!("{id}.{}", to_hex(&suffix)));
                let outcome = write_file(&temporary, body, size, metrics).await;
                if outcome != PutOutcome::Completed {
                    let _ = tokio::fs::remove_file(&temporary).await;
                    return Err(outcome);
                }
                Ok(Staged::File {
                    temporary,
                    destination: Self::file_path(directory, id),
                })
            }
            FileStore::Objects { store, files } => {
                let location = files.child(id);
                let mut upload = match store.put_multipart(&location).await {
                    Ok(upload) => upload,
                    Err(error) => {
                        tracing::error!(%location, %error, "cannot start an upload to the object store");
                        return Err(PutOutcome::Failed);
                    }
                };
                match write_parts(upload.as_mut(), body, size, metrics).await {
                    PutOutcome::Completed => Ok(Staged::Multipart(upload)),
                    outcome => {
                        if let Err(error) = upload.abort().await {
                            tracing::warn!(%location, %error, "cannot abort a multipart upload");
                        }
                        Err(outcome)
                    }
                }
            }
        }
    }

    /// A stored file, or `None` when there is none. For a HEAD
    /// (`length_only`) an object is only looked up, not fetched.
    pub async fn open_file(&self, id: &str, length_only: bool) -> Result<Option<Opened>, String> {
        match self {
            FileStore::Directory(directory) => {
                let file = match tokio::fs::File::open(Self::file_path(directory, id)).await {
                    Ok(file) => file,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(error) => return Err(error.to_string()),
                };
                let length = match file.metadata().await {
                    Ok(metadata) => metadata.len(),
                    Err(_) => return Ok(None),
                };
                let stream = futures::stream::unfold(file, |mut file| async move {
                    use tokio::io::AsyncReadExt;
                    let mut buffer = vec![0u8; 64 * 1024];
                    match file.read(&mut buffer).await {
                        Ok(0) => None,
                        Ok(read) => {
                            buffer.truncate(read);
                            Some((Ok::<_, std::io::Error>(Bytes::from(buffer)), file))
                        }
                        Err(error) => Some((Err(error), file)),
                    }
                });
                Ok(Some(Opened {
                    length,
                    body: Body::from_stream(stream),
                }))
            }
            FileStore::Objects { store, files } if length_only => {
                match store.head(&files.child(id)).await {
                    Ok(meta) => Ok(Some(Opened {
                        length: meta.size,
                        body: Body::empty(),
                    })),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(error) => Err(error.to_string()),
                }
            }
            FileStore::Objects { store, files } => match store.get(&files.child(id)).await {
                Ok(object) => {
                    let length = object.meta.size;
                    let stream: BoxStream<'static, Result<Bytes, object_store::Error>> =
                        object.into_stream();
                    Ok(Some(Opened {
                        length,
                        body: Body::from_stream(stream),
                    }))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error.to_string()),
            },
        }
    }

    /// Remove the files older than `expire_after` (and, in a directory, the
    /// temporary files of PUTs that ended an hour ago); count what stays.
    /// Every node may run it: removing a file twice is no error.
    pub async fn sweep(&self, expire_after: Duration) -> Result<Swept, String> {
        match self {
            FileStore::Directory(directory) => {
                let directory = directory.clone();
                tokio::task::spawn_blocking(move || sweep_directory(&directory, expire_after))
                    .await
                    .map_err(|error| error.to_string())?
                    .map_err(|error| error.to_string())
            }
            FileStore::Objects { store, files } => {
                let cutoff = now_millis()
                    .saturating_sub(i64::try_from(expire_after.as_millis()).unwrap_or(i64::MAX));
                let mut swept = Swept::default();
                let mut objects = store.list(Some(files));
                while let Some(object) = objects.try_next().await.map_err(|e| e.to_string())? {
                    if object.last_modified.timestamp_millis() < cutoff {
                        match store.delete(&object.location).await {
                            Ok(()) => swept.expired += 1,
                            // Another node removed it first.
                            Err(object_store::Error::NotFound { .. }) => {}
                            Err(error) => return Err(error.to_string()),
                        }
                    } else {
                        swept.stored_files += 1;
                        swept.stored_bytes += object.size;
                    }
                }
                Ok(swept)
            }
        }
    }
}

impl Staged {
    /// Make the file visible: rename it into place (atomic on one file
    /// system), or complete the multipart upload (atomic in S3).
    pub async fn commit(self) -> Result<(), String> {
        match self {
            Staged::File {
                temporary,
                destination,
            } => {
                let placed = async {
                    if let Some(parent) = destination.parent() {
                        tokio::fs::create_dir_all(parent).await?;
                    }
                    tokio::fs::rename(&temporary, &destination).await
                }
                .await;
                if let Err(error) = placed {
                    let _ = tokio::fs::remove_file(&temporary).await;
                    return Err(error.to_string());
                }
                Ok(())
            }
            Staged::Multipart(mut upload) => match upload.complete().await {
                Ok(_) => Ok(()),
                Err(error) => {
                    let _ = upload.abort().await;
                    Err(error.to_string())
                }
            },
        }
    }

    /// Drop the staged bytes.
    pub async fn discard(self) {
        match self {
            Staged::File { temporary, .. } => {
                let _ = tokio::fs::remove_file(&temporary).await;
            }
            Staged::Multipart(mut upload) => {
                if let Err(error) = upload.abort().await {
                    tracing::warn!(%error, "cannot abort a multipart upload");
                }
            }
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The body's chunks, counted against `size`: `Err` ends the stream with
/// the outcome of a body that failed or went past the slot.
async fn next_chunk(
    chunks: &mut (impl futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
    written: &mut u64,
    size: u64,
) -> Result<Option<Bytes>, PutOutcome> {
    match chunks.next().await {
        None if *written == size => Ok(None),
        None => Err(PutOutcome::Incomplete),
        Some(Err(error)) => {
            tracing::debug!(%error, "upload body failed");
            Err(PutOutcome::Incomplete)
        }
        Some(Ok(chunk)) => {
            *written += chunk.len() as u64;
            if *written > size {
                return Err(PutOutcome::TooLarge);
            }
            Ok(Some(chunk))
        }
    }
}

/// Stream `body` into a new file at `path` and sync it.
async fn write_file(path: &Path, body: Body, size: u64, metrics: &UploadMetrics) -> PutOutcome {
    let mut file = match tokio::fs::File::create(path).await {
        Ok(file) => file,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "cannot create an upload file");
            return PutOutcome::Failed;
        }
    };
    let mut written = 0u64;
    let mut chunks = body.into_data_stream();
    loop {
        let chunk = match next_chunk(&mut chunks, &mut written, size).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(outcome) => return outcome,
        };
        if let Err(error) = file.write_all(&chunk).await {
            tracing::error!(path = %path.display(), %error, "cannot write an upload file");
            return PutOutcome::Failed;
        }
        metrics.bytes_received.inc_by(chunk.len() as u64);
    }
    if let Err(error) = file.sync_all().await {
        tracing::error!(path = %path.display(), %error, "cannot sync an upload file");
        return PutOutcome::Failed;
    }
    PutOutcome::Completed
}

/// Stream `body` into the parts of a multipart upload: one part buffered
/// while the one before is sent, so a PUT holds at most two parts in
/// memory (10 MiB for slots up to 50 GB), never the whole file.
async fn write_parts(
    upload: &mut dyn MultipartUpload,
    body: Body,
    size: u64,
    metrics: &UploadMetrics,
) -> PutOutcome {
    let part_size = part_bytes(size);
    let mut buffer = PutPayloadMut::new();
    let mut sending: Option<tokio::task::JoinHandle<object_store::Result<()>>> = None;
    let mut written = 0u64;
    let mut chunks = body.into_data_stream();
    let sent = |sending: Option<tokio::task::JoinHandle<_>>| async move {
        match sending {
            None => PutOutcome::Completed,
            Some(part) => match part.await {
                Ok(Ok(())) => PutOutcome::Completed,
                Ok(Err(error)) => {
                    tracing::error!(%error, "cannot upload a part to the object store");
                    PutOutcome::Failed
                }
                Err(error) => {
                    tracing::error!(%error, "a part upload panicked");
                    PutOutcome::Failed
                }
            },
        }
    };
    loop {
        let chunk = match next_chunk(&mut chunks, &mut written, size).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(outcome) => {
                if let Some(part) = sending {
                    part.abort();
                }
                return outcome;
            }
        };
        metrics.bytes_received.inc_by(chunk.len() as u64);
        buffer.push(chunk);
        if buffer.content_length() as u64 >= part_size {
            let outcome = sent(sending.take()).await;
            if outcome != PutOutcome::Completed {
                return outcome;
            }
            let part = upload.put_part(std::mem::take(&mut buffer).freeze());
            sending = Some(tokio::spawn(part));
        }
    }
    let outcome = sent(sending.take()).await;
    if outcome != PutOutcome::Completed {
        return outcome;
    }
    if buffer.content_length() > 0 {
        // The last part, which may be smaller than the others.
        let part = upload.put_part(buffer.freeze());
        return sent(Some(tokio::spawn(part))).await;
    }
    PutOutcome::Completed
}

/// The directory's sweep (blocking).
fn sweep_directory(directory: &Path, expire_after: Duration) -> std::io::Result<Swept> {
    let now = SystemTime::now();
    let mut swept = Swept::default();
    let older_than = |metadata: &std::fs::Metadata, age: Duration| {
        metadata
            .modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|elapsed| elapsed > age)
    };
    for shard in std::fs::read_dir(directory.join("files"))? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if !metadata.is_file() {
                continue;
            }
            if older_than(&metadata, expire_after) {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => swept.expired += 1,
                    // Another node removed it first.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
            } else {
                swept.stored_files += 1;
                swept.stored_bytes += metadata.len();
            }
        }
    }
    for entry in std::fs::read_dir(directory.join("tmp"))?.flatten() {
        if entry
            .metadata()
            .is_ok_and(|metadata| older_than(&metadata, Duration::from_secs(3600)))
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> UploadMetrics {
        UploadMetrics::register(&prometheus::Registry::new()).unwrap()
    }

    async fn read_all(opened: Opened) -> Vec<u8> {
        axum::body::to_bytes(opened.body, usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[test]
    fn parts_fit_the_largest_slot_in_ten_thousand() {
        assert_eq!(part_bytes(1), MIN_PART_BYTES);
        assert_eq!(part_bytes(10 << 20), MIN_PART_BYTES);
        let huge = 1u64 << 40;
        assert!(part_bytes(huge) * MAX_PARTS >= huge);
    }

    #[test]
    fn the_directory_sweep_removes_expired_files_only() {
        let directory =
            std::env::temp_dir().join(format!("starling-upload-sweep-{}", std::process::id()));
        std::fs::create_dir_all(directory.join("files/ab")).unwrap();
        std::fs::create_dir_all(directory.join("tmp")).unwrap();
        let fresh = directory.join("files/ab/ab000000000000000000000000000000");
        std::fs::write(&fresh, b"hello").unwrap();
        let swept = sweep_directory(&directory, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            (swept.expired, swept.stored_files, swept.stored_bytes),
            (0, 1, 5)
        );
        std::thread::sleep(Duration::from_millis(20));
        let swept = sweep_directory(&directory, Duration::ZERO).unwrap();
        assert_eq!((swept.expired, swept.stored_files), (1, 0));
        assert!(!fresh.exists());
        // Twice is no error (another node may sweep the same directory).
        assert_eq!(
            sweep_directory(&directory, Duration::ZERO).unwrap().expired,
            0
        );
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[tokio::test]
    async fn objects_are_staged_committed_served_and_swept() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let files = FileStore::over(memory.clone(), "chat/uploads");
        let metrics = metrics();
        let id = "ab000000000000000000000000000001";
        // Bigger than one part: two parts and a last one.
        let content: Vec<u8> = (0..(11u32 << 20)).map(|n| (n % 251) as u8).collect();
        let size = content.len() as u64;
        let staged = files
            .receive(id, Body::from(content.clone()), size, &metrics)
            .await
            .ok()
            .unwrap();
        // Nothing visible before the commit.
        assert!(files.open_file(id, false).await.unwrap().is_none());
        staged.commit().await.unwrap();
        assert_eq!(
            files.open_file(id, true).await.unwrap().unwrap().length,
            size
        );
        let opened = files.open_file(id, false).await.unwrap().unwrap();
        assert_eq!(opened.length, size);
        assert_eq!(read_all(opened).await, content);
        assert!(memory
            .head(&ObjectPath::from("chat/uploads/files").child(id))
            .await
            .is_ok());
        assert_eq!(
            files.sweep(Duration::from_secs(3600)).await.unwrap(),
            Swept {
                expired: 0,
                stored_files: 1,
                stored_bytes: size
            }
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(files.sweep(Duration::ZERO).await.unwrap().expired, 1);
        assert!(files.open_file(id, false).await.unwrap().is_none());
        assert_eq!(files.sweep(Duration::ZERO).await.unwrap(), Swept::default());
    }

    #[tokio::test]
    async fn a_body_past_the_slot_or_short_of_it_leaves_nothing() {
        let memory = Arc::new(object_store::memory::InMemory::new());
        let files = FileStore::over(memory, "");
        let metrics = metrics();
        let id = "cd000000000000000000000000000002";
        let too_long = files
            .receive(id, Body::from(vec![1u8; 20]), 10, &metrics)
            .await;
        assert!(matches!(too_long, Err(PutOutcome::TooLarge)));
        let too_short = files
            .receive(id, Body::from(vec![1u8; 5]), 10, &metrics)
            .await;
        assert!(matches!(too_short, Err(PutOutcome::Incomplete)));
        assert!(files.open_file(id, false).await.unwrap().is_none());
        let staged = files
            .receive(id, Body::from(vec![1u8; 10]), 10, &metrics)
            .await
            .ok()
            .unwrap();
        staged.discard().await;
        assert!(files.open_file(id, false).await.unwrap().is_none());
    }
}
