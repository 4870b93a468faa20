//! One directory of manifests, scanned on demand: which files changed, what
//! objects they hold now, and the updates that turn the previous picture
//! into the new one.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::parse::parse_manifests;
use crate::source::{K8sObject, ObjectKind, ObjectRef, SourceError, SourceUpdate};

/// A file modified less than this long ago is re-read (and compared by
/// content) even when its size and mtime look unchanged: a second write in
/// the same timestamp tick would otherwise go unnoticed.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// What identifies a file version without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        }
    }

    fn is_recent(&self) -> bool {
        match self.modified {
            None => true,
            Some(m) => SystemTime::now()
                .duration_since(m)
                .map_or(true, |age| age < RACY_WINDOW),
        }
    }
}

#[derive(Debug)]
struct FileState {
    stamp: Stamp,
    digest: [u8; 32],
    /// The objects of the last version that parsed.
    objects: Vec<K8sObject>,
    /// Set while the current version does not parse.
    error: Option<SourceError>,
}

/// The state of one manifests directory between scans.
#[derive(Debug)]
pub struct ManifestsScanner {
    dir: PathBuf,
    files: BTreeMap<String, FileState>,
    /// What the consumer has been sent (and not told deleted).
    emitted: BTreeMap<ObjectRef, K8sObject>,
    dir_error: Option<SourceError>,
    /// The error list last sent.
    errors: Vec<SourceError>,
    synced: bool,
}

fn is_manifest(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

impl ManifestsScanner {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ManifestsScanner {
            dir: dir.into(),
            files: BTreeMap::new(),
            emitted: BTreeMap::new(),
            dir_error: None,
            errors: Vec::new(),
            synced: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file_label(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The manifest files of the directory, by name, with their metadata.
    fn list(&self) -> io::Result<BTreeMap<String, Stamp>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_manifest(&name) {
                continue;
            }
            // Follows symlinks (as a ConfigMap mount uses them).
            match std::fs::metadata(entry.path()) {
                Ok(m) if m.is_file() => {
                    out.insert(name, Stamp::of(&m));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Re-reads one file if it may have changed. Returns whether its objects
    /// or its error changed.
    fn refresh(&mut self, name: &str, stamp: Stamp) -> bool {
        if let Some(st) = self.files.get(name)
            && st.stamp == stamp
            && !stamp.is_recent()
        {
            return false;
        }
        let label = self.file_label(name);
        let bytes = match std::fs::read(self.dir.join(name)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.files.remove(name).is_some();
            }
            Err(e) => {
                let error = SourceError {
                    file: label,
                    line: 0,
                    message: format!("reading: {e}"),
                };
                return self.set_error(name, stamp, [0; 32], error);
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(st) = self.files.get_mut(name)
            && st.digest == digest
        {
            st.stamp = stamp;
            return false;
        }
        let parsed = match std::str::from_utf8(&bytes) {
            Ok(text) => parse_manifests(text).map_err(|e| SourceError {
                file: label.clone(),
                line: e.line,
                message: e.message,
            }),
            Err(e) => Err(SourceError {
                file: label.clone(),
                line: 0,
                message: format!("not UTF-8: {e}"),
            }),
        };
        match parsed {
            Ok(objects) => {
                tracing::debug!(file = %label, objects = objects.len(), "manifests: file loaded");
                self.files.insert(
                    name.to_string(),
                    FileState {
                        stamp,
                        digest,
                        objects,
                        error: None,
                    },
                );
                true
            }
            Err(error) => self.set_error(name, stamp, digest, error),
        }
    }

    /// Records that a file's current version is unusable; its previous
    /// objects stay.
    fn set_error(
        &mut self,
        name: &str,
        stamp: Stamp,
        digest: [u8; 32],
        error: SourceError,
    ) -> bool {
        tracing::warn!(file = %error.file, line = error.line, error = %error.message,
            "manifests: file rejected; keeping its previous objects");
        let st = self
            .files
            .entry(name.to_string())
            .or_insert_with(|| FileState {
                stamp,
                digest,
                objects: Vec::new(),
                error: None,
            });
        st.stamp = stamp;
        st.digest = digest;
        let changed = st.error.as_ref() != Some(&error);
        st.error = Some(error);
        changed
    }

    /// All objects of all files; on a clash the later file (by name) wins.
    fn merged(&self) -> BTreeMap<ObjectRef, K8sObject> {
        let mut out = BTreeMap::new();
        let mut owner: BTreeMap<ObjectRef, &str> = BTreeMap::new();
        for (name, st) in &self.files {
            for obj in &st.objects {
                let r = obj.object_ref();
                if let Some(prev) = owner.insert(r.clone(), name) {
                    tracing::warn!(object = %r, first = prev, second = %name,
                        "manifests: object defined twice; the later definition wins");
                }
                out.insert(r, obj.clone());
            }
        }
        out
    }

    /// Looks at the directory and returns what changed since the last scan:
    /// `Delete`s, then `Apply`s (namespaces first), then `Errors` if the
    /// problem list changed, then — after the first successful listing —
    /// `Synced` for every kind.
    pub fn scan(&mut self) -> Vec<SourceUpdate> {
        let mut out = Vec::new();
        let listed = match self.list() {
            Ok(l) => {
                self.dir_error = None;
                Some(l)
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "manifests: cannot list directory");
                self.dir_error = Some(SourceError {
                    file: self.dir.display().to_string(),
                    line: 0,
                    message: format!("listing: {e}"),
                });
                None
            }
        };
        if let Some(listed) = &listed {
            let before = self.files.len();
            self.files.retain(|name, _| listed.contains_key(name));
            let mut changed = self.files.len() != before;
            for (name, stamp) in listed {
                changed |= self.refresh(name, *stamp);
            }
            if changed || !self.synced {
                out.extend(self.diff());
            }
        }
        let mut errors: Vec<SourceError> = self.dir_error.iter().cloned().collect();
        errors.extend(self.files.values().filter_map(|f| f.error.clone()));
        if errors != self.errors {
            self.errors = errors.clone();
            out.push(SourceUpdate::Errors(errors));
        }
        if listed.is_some() && !self.synced {
            self.synced = true;
            out.extend(ObjectKind::ALL.into_iter().map(SourceUpdate::Synced));
        }
        out
    }

    fn diff(&mut self) -> Vec<SourceUpdate> {
        let now = self.merged();
        let mut out: Vec<SourceUpdate> = self
            .emitted
            .keys()
            .filter(|r| !now.contains_key(r))
            .cloned()
            .map(SourceUpdate::Delete)
            .collect();
        // ObjectRef orders by kind first, and Namespace is the first kind.
        for (r, obj) in &now {
            if self.emitted.get(r) != Some(obj) {
                out.push(SourceUpdate::Apply(obj.clone()));
            }
        }
        self.emitted = now;
        out
    }

    /// The problems currently reported.
    pub fn errors(&self) -> &[SourceError] {
        &self.errors
    }
}
