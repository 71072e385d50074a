//! Image cache tests: layouts built here with `write_layout`, layers with the tar crate.

use super::*;

/// One tar entry of a test layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        let (path, data, kind, link): (&str, &[u8], tar::EntryType, Option<&str>) = match e {
            E::Dir(p) => (p, b"", tar::EntryType::Directory, None),
            E::File(p, d) => (p, d.as_bytes(), tar::EntryType::Regular, None),
            E::Link(p, t) => (p, b"", tar::EntryType::Symlink, Some(t)),
            E::Hard(p, t) => (p, b"", tar::EntryType::Link, Some(t)),
        };
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        // Raw name bytes: the builder's own setters refuse `..`, which is what we test.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(t) = link {
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn cache(dir: &Path) -> ImageCache {
    ImageCache::new(&dir.join("cache"), 1 << 30)
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

#[test]
fn layers_apply_in_order_with_whiteouts() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    let base = layer(&[
        E::Dir("bin/"),
        E::File("bin/busybox", "BB"),
        E::Link("bin/sh", "/bin/busybox"),
        E::Dir("etc/"),
        E::File("etc/gone", "x"),
        E::Dir("opt/"),
        E::File("opt/old", "x"),
    ]);
    let top = layer(&[
        E::File("etc/.wh.gone", ""),
        E::Dir("opt/"),
        E::File("opt/new", "y"),
        E::File("opt/.wh..wh..opq", ""),
        E::Hard("bin/bb2", "bin/busybox"),
    ]);
    write_layout(&img, &[base, top], true, &["A=1".into()]).unwrap();
    let c = cache(t.path());
    let p = c.prepare(img.to_str().unwrap(), &none()).unwrap();
    let root = &p.rootfs;
    assert_eq!(fs::read_to_string(root.join("bin/busybox")).unwrap(), "BB");
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(fs::read_to_string(root.join("bin/bb2")).unwrap(), "BB");
    assert!(
        !root.join("etc/gone").exists(),
        "whiteout removes the lower file"
    );
    assert!(
        !root.join("etc/.wh.gone").exists(),
        "whiteouts are not files"
    );
    assert!(
        !root.join("opt/old").exists(),
        "opaque dir hides lower entries"
    );
    assert!(
        root.join("opt/new").exists(),
        "opaque dir keeps its own layer's entries"
    );
    assert_eq!(p.defaults.env, vec!["A=1".to_string()]);
    let key = p.key.clone().unwrap();
    assert!(root.starts_with(t.path().join("cache").join(&key)));
    // Second use: from the cache, same place, nothing unpacked again.
    fs::write(root.join("marker"), "kept").unwrap();
    let again = c.prepare(img.to_str().unwrap(), &none()).unwrap();
    assert_eq!(again.rootfs, p.rootfs);
    assert!(
        again.rootfs.join("marker").exists(),
        "reused, not unpacked again"
    );
}

#[test]
fn archives_and_plain_rootfs_dirs() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("img");
    write_layout(&img, &[layer(&[E::File("hello", "hi")])], false, &[]).unwrap();
    // An oci-archive: the layout directory as a tar.
    let archive = t.path().join("img.tar");
    let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
    b.append_dir_all(".", &img).unwrap();
    b.finish().unwrap();
    drop(b);
    let c = cache(t.path());
    let p = c.prepare(archive.to_str().unwrap(), &none()).unwrap();
    assert_eq!(fs::read_to_string(p.rootfs.join("hello")).unwrap(), "hi");
    let staging: Vec<_> = fs::read_dir(t.path().join("cache"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(STAGING))
        .collect();
    assert!(staging.is_empty(), "the archive's staging copy is removed");
    // The same archive file again: served from the cache without reading it. Proof: its
    // bytes are zeroed in place (same inode, size and mtime), which extraction would refuse.
    let mtime = fs::metadata(&archive).unwrap().modified().unwrap();
    let len = fs::metadata(&archive).unwrap().len() as usize;
    fs::write(&archive, vec![0u8; len]).unwrap();
    fs::File::options()
        .write(true)
        .open(&archive)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let again = c.prepare(archive.to_str().unwrap(), &none()).unwrap();
    assert_eq!(again.rootfs, p.rootfs);
    // A changed archive (new mtime) is read again, and this one is garbage.
    fs::File::options()
        .write(true)
        .open(&archive)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    assert!(c.prepare(archive.to_str().unwrap(), &none()).is_err());
    let rootfs = t.path().join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    let p = c.prepare(rootfs.to_str().unwrap(), &none()).unwrap();
    assert_eq!(p.rootfs, rootfs);
    assert_eq!(p.key, None);
}

/// Every refused image leaves the cache without entries or staging directories.
fn assert_cache_clean(dir: &Path) {
    let left: Vec<String> = fs::read_dir(dir.join("cache"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "cache left behind: {left:?}");
}

#[test]
fn escaping_layers_are_refused_and_leave_nothing() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let out = outside.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", layer(&[E::File("../evil", "x")])),
        (
            "nested dotdot",
            layer(&[E::Dir("a/"), E::File("a/../../evil", "x")]),
        ),
        (
            "through absolute symlink",
            layer(&[E::Link("esc", &out), E::File("esc/pwned", "x")]),
        ),
        (
            "relative symlink escaping",
            layer(&[E::Dir("a/"), E::Link("a/up", "../../../../etc")]),
        ),
        (
            "hard link outside",
            layer(&[E::Hard("h", "../../etc/passwd")]),
        ),
        (
            "whiteout of ..",
            layer(&[E::Dir("a/"), E::File("a/.wh...", "")]),
        ),
        ("whiteout of .", layer(&[E::File(".wh..", "")])),
        (
            "hard link through symlink",
            layer(&[E::Link("d", &out), E::Hard("h", "d/secret")]),
        ),
    ];
    fs::write(outside.join("secret"), "s").unwrap();
    for (i, (name, l)) in cases.into_iter().enumerate() {
        let img = t.path().join(format!("img{i}"));
        write_layout(&img, &[l], i % 2 == 0, &[]).unwrap();
        match cache(t.path()).prepare(img.to_str().unwrap(), &none()) {
            Err(OciError::UnsafeLayer { reason, .. }) => {
                assert!(
                    reason.contains("escapes")
                        || reason.contains("symlink")
                        || reason.contains("names no entry"),
                    "#{i} {name}: {reason}"
                )
            }
            other => panic!("#{i} {name}: want UnsafeLayer, got {other:?}"),
        }
        assert!(
            !outside.join("pwned").exists(),
            "#{i} {name}: wrote outside"
        );
        assert!(
            !t.path().join("evil").exists(),
            "#{i} {name}: wrote outside"
        );
        assert_cache_clean(t.path());
    }
}

#[test]
fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("host-file");
    fs::write(&target, "host").unwrap();
    let img = t.path().join("img");
    let l1 = layer(&[E::Link("f", target.to_str().unwrap())]);
    let l2 = layer(&[E::File("f", "image")]);
    write_layout(&img, &[l1, l2], false, &[]).unwrap();
    let p = cache(t.path())
        .prepare(img.to_str().unwrap(), &none())
        .unwrap();
    assert_eq!(fs::read_to_string(&target).unwrap(), "host");
    assert_eq!(fs::read_to_string(p.rootfs.join("f")).unwrap(), "image");
}

#[test]
fn missing_and_corrupt_images_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let c = cache(t.path());
    let expect = |image: &str, want: &str| match c.prepare(image, &none()) {
        Err(e @ OciError::Image { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(want), "{image}: want {want:?} in {msg:?}");
        }
        other => panic!("{image}: want an Image error, got {other:?}"),
    };
    expect("/does/not/exist", "No such file");
    expect("relative/img", "absolute");
    let empty = t.path().join("empty");
    fs::create_dir(&empty).unwrap();
    expect(empty.to_str().unwrap(), "empty directory");
    // A corrupted layer blob: its digest no longer matches.
    let img = t.path().join("img");
    write_layout(&img, &[layer(&[E::File("a", "1")])], false, &[]).unwrap();
    let blobs = img.join("blobs/sha256");
    let mut biggest: Vec<_> = fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    biggest.sort_by_key(|p| fs::metadata(p).unwrap().len());
    let layer_blob = biggest.last().unwrap().clone();
    let mut bytes = fs::read(&layer_blob).unwrap();
    bytes[600] ^= 0xff;
    fs::write(&layer_blob, bytes).unwrap();
    expect(img.to_str().unwrap(), "corrupt");
    // A broken index.
    fs::write(img.join("index.json"), "{not json").unwrap();
    expect(img.to_str().unwrap(), "index.json");
    // An index but no oci-layout marker.
    fs::remove_file(img.join("oci-layout")).unwrap();
    expect(img.to_str().unwrap(), "no oci-layout");
    // A truncated archive.
    let archive = t.path().join("bad.tar");
    fs::write(&archive, vec![7u8; 700]).unwrap();
    assert!(c.prepare(archive.to_str().unwrap(), &none()).is_err());
    assert_cache_clean(t.path());
}

#[test]
fn eviction_keeps_entries_in_use_and_the_newest() {
    let t = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    let c = ImageCache::new(&t.path().join("cache"), 10);
    for i in 0..3 {
        let img = t.path().join(format!("img{i}"));
        write_layout(
            &img,
            &[layer(&[E::File("f", "0123456789")])],
            false,
            &[format!("I={i}")],
        )
        .unwrap();
        // Use the first image while the others are added: it must survive.
        let in_use: BTreeSet<String> = keys.first().cloned().into_iter().collect();
        let p = c.prepare(img.to_str().unwrap(), &in_use).unwrap();
        keys.push(p.key.unwrap());
    }
    let present = |k: &String| t.path().join("cache").join(k).exists();
    assert!(present(&keys[0]), "in use: kept");
    assert!(!present(&keys[1]), "least recently used and idle: evicted");
    assert!(present(&keys[2]), "just prepared: kept");
}
