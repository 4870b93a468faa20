//! `clustermesh certs init`: a new CA and one certificate per role, written to a directory.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ca::{Ca, Validity};
use crate::error::CertError;
use crate::role::{CA_CERT_FILE, CA_KEY_FILE, Role, cert_file, key_file};

/// How long leaf certificates written by [`init`] are valid.
pub const LEAF_VALIDITY_DAYS: i64 = 365;

/// The addresses the server certificate always carries.
pub const DEFAULT_SERVER_SANS: [&str; 2] = ["127.0.0.1", "localhost"];

/// What [`init`] should do.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub cluster: String,
    pub out: PathBuf,
    /// Extra DNS names / IPs for the server certificate.
    pub sans: Vec<String>,
    /// Replace an existing CA.
    pub force: bool,
}

/// What [`init`] did.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Every file written, CA first.
    pub files: Vec<PathBuf>,
}

/// Writes ca.crt, ca.key and `<role>.crt`/`<role>.key` for every role into
/// `opts.out` (created with mode 0700 if missing).
///
/// Key files get mode 0600 from the moment they exist; every file is written to
/// a temporary name and renamed into place. Refuses with
/// [`CertError::CaExists`] when ca.crt or ca.key already exists, unless `force`.
/// The server certificate carries 127.0.0.1 and localhost plus `opts.sans`.
pub fn init(opts: &InitOptions) -> Result<InitReport, CertError> {
    let out = &opts.out;
    for name in [CA_CERT_FILE, CA_KEY_FILE] {
        let path = out.join(name);
        // symlink_metadata: a dangling symlink counts as existing too.
        if fs::symlink_metadata(&path).is_ok() {
            if !opts.force {
                return Err(CertError::CaExists { path });
            }
            tracing::warn!(path = %path.display(), "replacing the existing cluster CA (force)");
        }
    }

    // Everything is generated before anything is written: a bad SAN or cluster
    // name leaves the directory untouched.
    let ca = Ca::generate(&opts.cluster)?;
    let mut server_sans: Vec<String> = DEFAULT_SERVER_SANS.iter().map(|s| s.to_string()).collect();
    for san in &opts.sans {
        if !server_sans.contains(san) {
            server_sans.push(san.clone());
        }
    }
    let validity = Validity::days(LEAF_VALIDITY_DAYS);
    let mut leaves = Vec::with_capacity(Role::ALL.len());
    for role in Role::ALL {
        let sans: &[String] = if role == Role::Server {
            &server_sans
        } else {
            &[]
        };
        leaves.push((role, ca.issue(role, sans, validity)?));
    }

    create_dir(out)?;
    let mut files = Vec::with_capacity(2 + 2 * leaves.len());
    // Leaves first, CA last: an interrupted run leaves no CA behind and can
    // simply be repeated without force.
    for (role, leaf) in &leaves {
        files.push(write_file(
            out,
            cert_file(*role),
            leaf.cert_pem.as_bytes(),
            false,
        )?);
        files.push(write_file(
            out,
            key_file(*role),
            leaf.key_pem.as_bytes(),
            true,
        )?);
    }
    let ca_key = write_file(out, CA_KEY_FILE, ca.key_pem().as_bytes(), true)?;
    let ca_cert = write_file(out, CA_CERT_FILE, ca.cert_pem().as_bytes(), false)?;
    files.splice(0..0, [ca_cert, ca_key]);

    tracing::info!(cluster = %opts.cluster, dir = %out.display(), files = files.len(), "wrote cluster CA and role certificates");
    Ok(InitReport { files })
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| CertError::Write {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `dir/name` atomically: a temporary file created with its final mode
/// (0600 for secrets, 0644 otherwise), synced, then renamed over the target.
fn write_file(dir: &Path, name: &str, contents: &[u8], secret: bool) -> Result<PathBuf, CertError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let err = |p: &Path| {
        let p = p.to_owned();
        move |source| CertError::Write { path: p, source }
    };
    // A leftover from a crashed run of this same pid; ignore "not found".
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let result = (|| {
        let mut file = options.open(&tmp).map_err(err(&tmp))?;
        file.write_all(contents).map_err(err(&tmp))?;
        file.sync_all().map_err(err(&tmp))?;
        fs::rename(&tmp, &path).map_err(err(&path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    tracing::debug!(path = %path.display(), secret, "wrote file");
    Ok(path)
}
