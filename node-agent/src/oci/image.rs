//! Container images: an OCI image layout (a directory with `oci-layout` and `index.json`,
//! or a tar archive of one, as `skopeo copy … oci:DIR` / `oci-archive:FILE` write them), or a
//! plain rootfs directory used in place.
//!
//! Layouts are unpacked once into a content-addressed cache, `<cache>/<manifest sha256>/`
//! (`rootfs/`, `image.json` with the image's env and working directory, `size`), and reused by
//! every later job. Each unpack goes to a private staging directory renamed into place at the
//! end, so a failure or a crash never leaves a half-unpacked entry under a digest name.
//! Above the size limit the least recently used entries that no running job uses are evicted.
//!
//! Layer safety: every blob's sha256 is checked; an entry with a `..` component, a relative
//! symlink whose target climbs above the rootfs, a hard link outside it, or any entry whose
//! path passes through a symlink is refused with the layer's digest; a file never overwrites
//! through a symlink (the link is replaced). Absolute symlinks (`/bin/sh -> /bin/busybox`) are
//! kept: the kernel resolves them inside the container's root, and the unpacker never follows
//! them. Whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove what lower layers put there.

use super::{io_err, OciError};
use flate2::read::GzDecoder;
use oci_spec::image::{ImageIndex, ImageManifest, MediaType};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// What a job needs from its image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageDefaults {
    /// `KEY=VALUE` from the image config.
    pub env: Vec<String>,
    /// The image's working directory; empty if unset.
    pub workdir: String,
}

/// The part of the image config (`application/vnd.oci.image.config.v1+json`) a job uses.
/// Not oci-spec's `ImageConfiguration`: 0.7 requires `history`, which the image spec makes
/// optional, and would refuse valid images.
#[derive(Debug, Default, Deserialize)]
struct ImageConfigSubset {
    #[serde(default)]
    config: ExecConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ExecConfig {
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    working_dir: String,
}

/// A rootfs ready to be the container's root.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The rootfs directory (read-only for the job).
    pub rootfs: PathBuf,
    /// The image's env and working directory.
    pub defaults: ImageDefaults,
    /// The cache key (manifest sha256), None for a plain rootfs directory.
    pub key: Option<String>,
}

/// The unpacked-image cache of one node.
#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// Name prefix of staging directories: `.tmp-<pid>-<what>`.
const STAGING: &str = ".tmp-";

impl ImageCache {
    /// A cache in `dir` holding at most `max_bytes` of unpacked files (entries in use are
    /// kept even above it).
    pub fn new(dir: &Path, max_bytes: u64) -> ImageCache {
        ImageCache {
            dir: dir.to_path_buf(),
            max_bytes,
        }
    }

    /// Makes `image` ready to run: a plain rootfs directory as is, an OCI layout (directory
    /// or tar archive) from the cache, unpacking it first if needed. Then evicts entries over
    /// the limit, except `in_use` keys and this one.
    ///
    /// # Errors
    /// [`OciError::Image`] for a missing, unreadable or corrupt image (bad JSON, digest
    /// mismatch, unsupported layer compression), [`OciError::UnsafeLayer`] for a layer entry
    /// escaping the rootfs. Nothing is left in the cache then.
    pub fn prepare(&self, image: &str, in_use: &BTreeSet<String>) -> Result<Prepared, OciError> {
        let err = |reason: String| OciError::Image {
            image: image.to_string(),
            reason,
        };
        let path = Path::new(image);
        if !path.is_absolute() {
            return Err(err("must be an absolute path".into()));
        }
        let meta = fs::metadata(path).map_err(|e| err(e.to_string()))?;
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let prepared = if meta.is_dir() && !path.join("oci-layout").exists() {
            if path.join("index.json").exists() {
                return Err(err("has index.json but no oci-layout file".into()));
            }
            let mut entries = fs::read_dir(path).map_err(|e| err(e.to_string()))?;
            if entries.next().is_none() {
                return Err(err(
                    "empty directory (neither an OCI layout nor a rootfs)".into()
                ));
            }
            Prepared {
                rootfs: path.to_path_buf(),
                defaults: ImageDefaults::default(),
                key: None,
            }
        } else if meta.is_dir() {
            self.prepare_layout(image, path)?
        } else {
            self.prepare_archive(image, path, &meta)?
        };
        if let Some(key) = &prepared.key {
            let mut keep = in_use.clone();
            keep.insert(key.clone());
            self.evict(&keep);
        }
        Ok(prepared)
    }

    /// An OCI archive: its cached entry if this very file (device, inode, size, mtime) was
    /// unpacked before, else the archive extracted to a staging layout and prepared from
    /// there (the staging copy is removed either way).
    fn prepare_archive(
        &self,
        image: &str,
        path: &Path,
        meta: &fs::Metadata,
    ) -> Result<Prepared, OciError> {
        use std::os::unix::fs::MetadataExt;
        let identity = format!(
            "{}:{}:{}:{}.{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        let memo_dir = self.dir.join("archives");
        let memo = memo_dir.join(format!("{:x}", Sha256::digest(identity.as_bytes())));
        if let Some(hit) = fs::read_to_string(&memo)
            .ok()
            .and_then(|key| cached(&self.dir.join(key.trim()), key.trim()))
        {
            return Ok(hit);
        }
        let staging = Staging::new(&self.dir, "archive")?;
        let file = fs::File::open(path).map_err(|e| image_err(image, e.to_string()))?;
        unpack_layer(file, &staging.path, image, "(archive)")?;
        let prepared = self.prepare_layout(image, &staging.path)?;
        if let Some(key) = &prepared.key {
            // Best effort: without the memo the next launch extracts the archive again.
            let _ = fs::create_dir_all(&memo_dir).and_then(|_| fs::write(&memo, key));
        }
        Ok(prepared)
    }

    /// The cached entry for the layout's manifest, unpacking it first if needed.
    fn prepare_layout(&self, image: &str, layout: &Path) -> Result<Prepared, OciError> {
        let key = manifest_key(image, layout)?;
        let entry = self.dir.join(&key);
        if let Some(hit) = cached(&entry, &key) {
            return Ok(hit);
        }
        let (manifest, defaults) = read_manifest(image, layout, &key)?;
        let staging = Staging::new(&self.dir, &key)?;
        let rootfs = staging.path.join("rootfs");
        fs::create_dir(&rootfs).map_err(io_err(&rootfs))?;
        let size = unpack_layers(image, layout, &manifest, &rootfs)?;
        let write = |name: &str, bytes: Vec<u8>| {
            let p = staging.path.join(name);
            fs::write(&p, bytes).map_err(io_err(&p))
        };
        write(
            "image.json",
            serde_json::to_vec(&defaults).unwrap_or_default(),
        )?;
        write("size", size.to_string().into_bytes())?;
        write("last_used", Vec::new())?;
        // Another job may have unpacked the same image meanwhile: then its entry wins and
        // ours is dropped with the staging directory.
        if fs::rename(&staging.path, &entry).is_err() && !entry.join("rootfs").is_dir() {
            return Err(image_err(
                image,
                format!("cannot move the unpacked image to {}", entry.display()),
            ));
        }
        Ok(Prepared {
            rootfs: entry.join("rootfs"),
            defaults,
            key: Some(key),
        })
    }

    /// Removes stale staging directories (their process is gone) and, while the unpacked
    /// size is over the limit, the least recently used entries not in `keep`.
    pub fn evict(&self, keep: &BTreeSet<String>) {
        let mut entries = Vec::new();
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(STAGING) {
                let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
                let alive = pid.is_some_and(|p| {
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
                });
                if !alive {
                    let _ = fs::remove_dir_all(e.path());
                }
                continue;
            }
            if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let size: u64 = fs::read_to_string(e.path().join("size"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let used = fs::metadata(e.path().join("last_used"))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            entries.push((used, name, size));
        }
        let mut total: u64 = entries.iter().map(|e| e.2).sum();
        entries.sort();
        for (_, name, size) in entries {
            if total <= self.max_bytes {
                break;
            }
            if keep.contains(&name) {
                continue;
            }
            // Rename first: a concurrent prepare never sees a half-deleted entry.
            let doomed = self
                .dir
                .join(format!("{STAGING}{}-evict-{name}", std::process::id()));
            if fs::rename(self.dir.join(&name), &doomed).is_ok() {
                let _ = fs::remove_dir_all(&doomed);
                total = total.saturating_sub(size);
                tracing::info!(image = name, "evicted from the image cache");
            }
        }
    }
}

fn image_err(image: &str, reason: String) -> OciError {
    OciError::Image {
        image: image.to_string(),
        reason,
    }
}

/// Checks the layout's marker and returns the sha256 of the manifest to run: the cache key.
fn manifest_key(image: &str, layout: &Path) -> Result<String, OciError> {
    let err = |reason: String| image_err(image, reason);
    let marker =
        fs::read(layout.join("oci-layout")).map_err(|e| err(format!("oci-layout: {e}")))?;
    let marker: serde_json::Value =
        serde_json::from_slice(&marker).map_err(|e| err(format!("oci-layout: {e}")))?;
    if marker.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(err("oci-layout: imageLayoutVersion is not 1.0.0".into()));
    }
    let index_bytes =
        fs::read(layout.join("index.json")).map_err(|e| err(format!("index.json: {e}")))?;
    // serde_json directly: oci-spec's from_reader hides the parse error's text.
    let index: ImageIndex =
        serde_json::from_slice(&index_bytes).map_err(|e| err(format!("index.json: {e}")))?;
    let manifest_desc = pick_manifest(&index)
        .ok_or_else(|| err("index.json names no linux/amd64 image manifest".into()))?;
    Ok(manifest_desc
        .as_digest_sha256()
        .ok_or_else(|| err("manifest digest is not sha256".into()))?
        .to_string())
}

/// The complete cache entry `entry`, marked as just used; None if there is none.
fn cached(entry: &Path, key: &str) -> Option<Prepared> {
    if !entry.join("rootfs").is_dir() {
        return None;
    }
    let _ = fs::write(entry.join("last_used"), b"");
    let defaults = fs::read(entry.join("image.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    Some(Prepared {
        rootfs: entry.join("rootfs"),
        defaults,
        key: Some(key.to_string()),
    })
}

/// The manifest `key` and what the job needs from the image config, digests checked.
fn read_manifest(
    image: &str,
    layout: &Path,
    key: &str,
) -> Result<(ImageManifest, ImageDefaults), OciError> {
    let err = |reason: String| image_err(image, reason);
    let manifest_bytes = read_blob(layout, key, image)?;
    let manifest: ImageManifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| err(format!("manifest {key}: {e}")))?;
    let config_hex = manifest
        .config()
        .as_digest_sha256()
        .ok_or_else(|| err("config digest is not sha256".into()))?;
    let config_bytes = read_blob(layout, config_hex, image)?;
    let config: ImageConfigSubset = serde_json::from_slice(&config_bytes)
        .map_err(|e| err(format!("config {config_hex}: {e}")))?;
    let defaults = ImageDefaults {
        env: config.config.env,
        workdir: config.config.working_dir,
    };
    Ok((manifest, defaults))
}

/// Unpacks `manifest`'s layers in order into `rootfs`; returns the bytes written.
fn unpack_layers(
    image: &str,
    layout: &Path,
    manifest: &ImageManifest,
    rootfs: &Path,
) -> Result<u64, OciError> {
    let err = |reason: String| image_err(image, reason);
    let mut size = 0u64;
    for layer in manifest.layers() {
        let hex = layer
            .as_digest_sha256()
            .ok_or_else(|| err("layer digest is not sha256".into()))?;
        let blob = blob_path(layout, hex);
        verify_blob(&blob, hex, image)?;
        let file = fs::File::open(&blob).map_err(|e| err(format!("blob {hex}: {e}")))?;
        size += match layer.media_type() {
            MediaType::ImageLayer => unpack_layer(file, rootfs, image, hex)?,
            MediaType::ImageLayerGzip => unpack_layer(GzDecoder::new(file), rootfs, image, hex)?,
            MediaType::Other(t) if t == "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
                unpack_layer(GzDecoder::new(file), rootfs, image, hex)?
            }
            other => {
                return Err(err(format!(
                    "layer {hex}: media type {other} is not supported (tar or tar+gzip)"
                )))
            }
        };
    }
    Ok(size)
}

/// A private directory under the cache, removed on drop unless renamed away.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn new(cache: &Path, what: &str) -> Result<Staging, OciError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = cache.join(format!("{STAGING}{}-{what}-{nanos}", std::process::id()));
        fs::create_dir_all(&path).map_err(io_err(&path))?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The manifest to run: the only one, or the first for linux/amd64 (or without platform).
fn pick_manifest(index: &ImageIndex) -> Option<&oci_spec::image::Descriptor> {
    let manifests = index.manifests();
    let is_manifest = |d: &&oci_spec::image::Descriptor| {
        matches!(d.media_type(), MediaType::ImageManifest)
            || matches!(d.media_type(), MediaType::Other(t) if t == "application/vnd.docker.distribution.manifest.v2+json")
    };
    manifests.iter().filter(is_manifest).find(|d| {
        d.platform().as_ref().is_none_or(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
        })
    })
}

fn blob_path(layout: &Path, hex: &str) -> PathBuf {
    layout.join("blobs").join("sha256").join(hex)
}

/// Reads a small blob (manifest, config) and checks its digest.
fn read_blob(layout: &Path, hex: &str, image: &str) -> Result<Vec<u8>, OciError> {
    let path = blob_path(layout, hex);
    let bytes = fs::read(&path).map_err(|e| OciError::Image {
        image: image.to_string(),
        reason: format!("blob {hex}: {e}"),
    })?;
    let got = format!("{:x}", Sha256::digest(&bytes));
    if got != hex {
        return Err(OciError::Image {
            image: image.to_string(),
            reason: format!("blob {hex} is corrupt (its sha256 is {got})"),
        });
    }
    Ok(bytes)
}

fn verify_blob(path: &Path, hex: &str, image: &str) -> Result<(), OciError> {
    let err = |reason: String| OciError::Image {
        image: image.to_string(),
        reason,
    };
    let mut f = fs::File::open(path).map_err(|e| err(format!("blob {hex}: {e}")))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| err(format!("blob {hex}: {e}")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = format!("{:x}", h.finalize());
    if got != hex {
        return Err(err(format!("blob {hex} is corrupt (its sha256 is {got})")));
    }
    Ok(())
}

/// Unpacks one layer tar into `root` (see the module doc for what is refused) and returns
/// the bytes of regular files written.
///
/// # Errors
/// [`OciError::UnsafeLayer`] for an escaping entry, [`OciError::Image`] for a corrupt tar.
pub fn unpack_layer<R: Read>(
    reader: R,
    root: &Path,
    image: &str,
    layer: &str,
) -> Result<u64, OciError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_unpack_xattrs(false);
    let mut ctx = Layer {
        root,
        image,
        layer,
        created: HashSet::new(),
        bytes: 0,
    };
    for entry in archive.entries().map_err(|e| ctx.corrupt(e))? {
        let entry = entry.map_err(|e| ctx.corrupt(e))?;
        ctx.unpack_entry(entry)?;
    }
    Ok(ctx.bytes)
}

/// One layer being unpacked.
struct Layer<'a> {
    root: &'a Path,
    image: &'a str,
    layer: &'a str,
    /// Paths (relative) this layer created: an opaque whiteout keeps them.
    created: HashSet<PathBuf>,
    /// Bytes of regular files written.
    bytes: u64,
}

impl Layer<'_> {
    fn refuse(&self, reason: String) -> OciError {
        OciError::UnsafeLayer {
            image: self.image.to_string(),
            layer: self.layer.to_string(),
            reason,
        }
    }

    fn corrupt(&self, e: std::io::Error) -> OciError {
        image_err(self.image, format!("layer {}: {e}", self.layer))
    }

    fn unpack_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), OciError> {
        let raw = entry.path().map_err(|e| self.corrupt(e))?.into_owned();
        let rel = entry_path(&raw)
            .ok_or_else(|| self.refuse(format!("entry {} escapes the rootfs", raw.display())))?;
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Ok(()); // "./": the root itself
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        no_symlink_on_path(self.root, &parent).map_err(|link| {
            self.refuse(format!(
                "entry {} goes through symlink {}",
                raw.display(),
                link.display()
            ))
        })?;
        if let Some(hidden) = name.strip_prefix(".wh.") {
            // `.wh..` would hide the parent of the directory, `.wh...` its grandparent.
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(self.refuse(format!("whiteout {} names no entry", raw.display())));
            }
        }
        if self.whiteout(&parent, &name) {
            return Ok(());
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() {
            // Device nodes come from the runtime's /dev (and CDI), never from images.
            return Ok(());
        }
        let dir = self.root.join(&parent);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let dst = self.root.join(&rel);
        if let Ok(meta) = fs::symlink_metadata(&dst) {
            // Replace whatever was there, never write through it (a symlink to the host).
            if !(meta.is_dir() && kind.is_dir()) {
                remove_any(&dst);
            }
        }
        let target: Option<PathBuf> = entry
            .link_name()
            .map_err(|e| self.corrupt(e))?
            .map(|t| t.into_owned());
        if kind.is_symlink() || kind.is_hard_link() {
            let target = target
                .as_deref()
                .ok_or_else(|| self.refuse(format!("link {} has no target", raw.display())))?;
            self.check_link(&raw, &parent, target, kind.is_hard_link())?;
        }
        if kind.is_hard_link() {
            // check_link made sure the target is a clean path inside the rootfs.
            let inside = target.as_deref().and_then(entry_path).unwrap_or_default();
            fs::hard_link(self.root.join(inside), &dst).map_err(|e| self.corrupt(e))?;
        } else {
            if kind.is_file() {
                self.bytes += entry.header().size().unwrap_or(0);
            }
            entry.unpack(&dst).map_err(|e| self.corrupt(e))?;
        }
        self.created.insert(rel);
        Ok(())
    }

    /// Applies `name` in `parent` if it is a whiteout; true if it was one.
    fn whiteout(&self, parent: &Path, name: &str) -> bool {
        let dir = self.root.join(parent);
        if name == ".wh..wh..opq" {
            // Opaque: hide what lower layers put in this directory, keep this layer's.
            for child in fs::read_dir(&dir).into_iter().flatten().flatten() {
                if !self.created.contains(&parent.join(child.file_name())) {
                    remove_any(&child.path());
                }
            }
            return true;
        }
        match name.strip_prefix(".wh.") {
            Some(hidden) => {
                remove_any(&dir.join(hidden));
                true
            }
            None => false,
        }
    }

    /// Refuses a relative symlink climbing above the rootfs, and a hard link whose target
    /// is outside it or behind a symlink.
    fn check_link(
        &self,
        raw: &Path,
        parent: &Path,
        target: &Path,
        hard: bool,
    ) -> Result<(), OciError> {
        let escapes = || {
            self.refuse(format!(
                "link {} -> {} escapes the rootfs",
                raw.display(),
                target.display()
            ))
        };
        if !hard {
            if target.is_relative() && relative_inside(&parent.join(target)).is_none() {
                return Err(escapes());
            }
            return Ok(());
        }
        let target_rel = entry_path(target).ok_or_else(escapes)?;
        no_symlink_on_path(self.root, target_rel.parent().unwrap_or(Path::new(""))).map_err(
            |link| {
                self.refuse(format!(
                    "hard link {} goes through symlink {}",
                    raw.display(),
                    link.display()
                ))
            },
        )
    }
}

/// An entry's path relative to the rootfs; None if it has any `..` component (well-formed
/// layers never do). A leading `/` or `./` is dropped (some tools write them).
fn entry_path(path: &Path) -> Option<PathBuf> {
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return None;
    }
    relative_inside(path)
}

/// `path` as a path relative to the rootfs, or None if a `..` would leave it (a symlink
/// target, resolved from its directory).
fn relative_inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Err(first symlink) if any directory on `rel` (relative to `root`) is a symlink.
fn no_symlink_on_path(root: &Path, rel: &Path) -> Result<(), PathBuf> {
    let mut at = PathBuf::new();
    for c in rel.components() {
        at.push(c);
        match fs::symlink_metadata(root.join(&at)) {
            Ok(m) if m.file_type().is_symlink() => return Err(at),
            Ok(_) => {}
            Err(_) => return Ok(()), // not there yet: created as a directory
        }
    }
    Ok(())
}

fn remove_any(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Writes an OCI image layout in `dir` (created) with one manifest for linux/amd64 whose
/// layers are `layers` (uncompressed tars, stored gzip-compressed when `gzip`) and whose
/// config sets `env`; returns the manifest's sha256. What `skopeo copy … oci:DIR` writes,
/// minus annotations: used to package test images and local rootfs trees.
///
/// # Errors
/// When a file cannot be written.
pub fn write_layout(
    dir: &Path,
    layers: &[Vec<u8>],
    gzip: bool,
    env: &[String],
) -> std::io::Result<String> {
    use std::io::Write as _;
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> std::io::Result<(String, u64)> {
        let hex = format!("{:x}", Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes)?;
        Ok((hex, bytes.len() as u64))
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar_bytes in layers {
        diff_ids.push(format!("sha256:{:x}", Sha256::digest(tar_bytes)));
        let (stored, media) = if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar_bytes)?;
            (gz.finish()?, "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar_bytes.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let (hex, size) = put(&stored)?;
        layer_descs.push(serde_json::json!({
            "mediaType": media, "digest": format!("sha256:{hex}"), "size": size}));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (config_hex, config_size) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_hex}"), "size": config_size},
        "layers": layer_descs});
    let (manifest_hex, manifest_size) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_hex}"), "size": manifest_size,
                       "platform": {"architecture": "amd64", "os": "linux"}}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(manifest_hex)
}

#[cfg(test)]
mod tests;
